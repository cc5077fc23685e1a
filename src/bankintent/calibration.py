"""Confidence calibration: temperature scaling fitted on the validation split (Guo et al., 2017), and
the expected calibration error (ECE) before and after."""

from __future__ import annotations

import numpy as np
import torch

from bankintent.config import TrainConfig
from bankintent.data import Splits
from bankintent.predict import Predictor, softmax


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        mask = (confidence > low) & (confidence <= high)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def calibrate(predictor: Predictor, splits: Splits, cfg: TrainConfig) -> dict:
    """Fit the softmax temperature on validation into ``predictor.spec``; report the ECE before and after."""
    logits = predictor.logits(splits.validation.texts)
    labels = np.array(splits.ids(splits.validation))
    spec = predictor.spec
    spec.temperature = fit_temperature(logits, labels)
    return {
        "temperature": spec.temperature,
        "val_ece_before": expected_calibration_error(softmax(logits), labels),
        "val_ece_after": expected_calibration_error(softmax(logits / spec.temperature), labels),
    }
