"""Confidence calibration and the out-of-scope fallback, fitted when training ends.

- Temperature scaling fitted on the validation split (Guo et al., 2017); the expected calibration
  error (ECE) before and after.
- The out-of-scope scores of ``bankintent.ood``: the Mahalanobis statistics are fitted on the
  training split's embeddings; the default score is the one that best separates the validation
  queries from the out-of-scope probe set (area under the ROC curve); each score's threshold keeps
  ``cfg.oos_coverage`` of the validation queries in scope.
- Accuracy against coverage (``<split>_coverage.csv`` and ``.png``): the accuracy on the queries kept
  when the least confident are sent to the fallback, and the share of the probe set caught.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bankintent import ood  # noqa: E402
from bankintent.config import TrainConfig  # noqa: E402
from bankintent.data import Splits  # noqa: E402
from bankintent.predict import Predictor, softmax  # noqa: E402

log = logging.getLogger(__name__)


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


def scores_of(predictor: Predictor, logits: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(calibrated probabilities, {score name: out-of-scope scores}) from a predictor's outputs, for
    every score the model folder supports."""
    probs = softmax(logits / predictor.spec.temperature)
    names = ood.SCORES if predictor.spec.ood else ("msp",)
    return probs, {name: predictor.oos_scores(probs, features, name) for name in names}


def calibrate(predictor: Predictor, splits: Splits, cfg: TrainConfig) -> dict:
    """Fit the temperature, the Mahalanobis statistics, the default out-of-scope score and the
    thresholds into ``predictor.spec``; write ``validation_coverage.{csv,png}`` to ``cfg.output``.
    Returns the metrics: ECE before and after, the score chosen, its threshold, each score's AUROC
    and the probe set's recall at the threshold."""
    spec = predictor.spec
    logits, features = predictor.outputs(splits.validation.texts, desc="calibrating: validation")
    labels = np.array(splits.ids(splits.validation))
    spec.temperature = fit_temperature(logits, labels)
    metrics = {
        "temperature": spec.temperature,
        "val_ece_before": expected_calibration_error(softmax(logits), labels),
        "val_ece_after": expected_calibration_error(softmax(logits / spec.temperature), labels),
    }
    _, train_features = predictor.outputs(splits.train.texts, desc="out-of-scope: embedding train")
    spec.ood = ood.fit_mahalanobis(train_features, np.array(splits.ids(splits.train)), len(spec.labels))
    probs, val_scores = scores_of(predictor, logits, features)
    _, probe_scores = scores_of(predictor, *predictor.outputs(ood.probe_set()))
    auroc = {name: ood.auroc(val_scores[name], probe_scores[name]) for name in val_scores}
    spec.oos_score = max(auroc, key=auroc.get)
    spec.oos_thresholds = {name: ood.threshold_for_coverage(s, cfg.oos_coverage) for name, s in val_scores.items()}
    threshold = spec.oos_thresholds[spec.oos_score]
    predictor.oos_score, predictor.oos_threshold = spec.oos_score, threshold
    metrics.update({
        "oos_score": spec.oos_score,
        "oos_threshold": threshold,
        "oos_coverage_target": cfg.oos_coverage,
        **{f"oos_auroc_{name}": value for name, value in auroc.items()},
        "oos_probe_recall": float((probe_scores[spec.oos_score] > threshold).mean()),
        "oos_probe_size": len(probe_scores[spec.oos_score]),
    })
    log.info("out-of-scope: %s score (AUROC %s), threshold %.4g catches %.1f%% of the probe set",
             spec.oos_score, ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()), threshold, 100 * metrics["oos_probe_recall"])
    write_coverage(probs.argmax(-1) == labels, val_scores, probe_scores, predictor, Path(cfg.output), "validation")
    return metrics


def coverage_report(predictor: Predictor, correct: np.ndarray, logits: np.ndarray, features: np.ndarray,
                    out: Path, split: str) -> dict:
    """Accuracy against coverage on a split (whether each query was ``correct``, and the predictor's
    ``outputs`` for it) and the probe set's recall at the model's threshold; writes
    ``<split>_coverage.csv`` and ``<split>_coverage.png`` to ``out``; returns a summary."""
    _, scores = scores_of(predictor, logits, features)
    _, probe_scores = scores_of(predictor, *predictor.outputs(ood.probe_set()))
    return write_coverage(correct, scores, probe_scores, predictor, Path(out), split)


def write_coverage(correct: np.ndarray, scores: dict[str, np.ndarray], probe_scores: dict[str, np.ndarray],
                   predictor: Predictor, out: Path, split: str) -> dict:
    table = pd.DataFrame([{"score": name, **row} for name in scores for row in ood.coverage_curve(scores[name], correct, probe_scores[name])])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{split}_coverage.csv", index=False, float_format="%.4f")
    _plot_coverage(correct, scores, out / f"{split}_coverage.png", split)
    summary = {"split": split, "auroc": {name: ood.auroc(scores[name], probe_scores[name]) for name in scores}}
    if predictor.oos_threshold is not None:
        name, threshold = predictor.oos_score, predictor.oos_threshold
        kept = scores[name] <= threshold
        summary.update({
            "oos_score": name,
            "threshold": threshold,
            "coverage": float(kept.mean()),
            "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
            "probe_recall": float((probe_scores[name] > threshold).mean()),
        })
    return summary


def _plot_coverage(correct: np.ndarray, scores: dict[str, np.ndarray], path: Path, split: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in scores.items():
        order = np.argsort(values, kind="stable")  # most confident first
        kept = np.arange(1, len(order) + 1)
        ax.plot(kept / len(order), np.cumsum(correct[order]) / kept, label=name)
    ax.set(xlabel="coverage (share of queries answered)", ylabel="accuracy on the queries answered",
           title=f"Accuracy against coverage ({split})", xlim=(0.5, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(title="out-of-scope score")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
