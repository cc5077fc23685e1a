"""Prediction: ``Predictor.load(DIR).predict(["I lost my debit card"])``.

``DIR`` is a training run's output folder (its ``adapter/`` is used) or a model folder itself. LoRA
weights are merged into the base model at load time, so inference costs what the bare model costs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from bankintent.errors import DataError
from bankintent.modeling import ModelSpec, encode_batches, load_model, load_tokenizer
from bankintent.text import preprocess

log = logging.getLogger(__name__)

MAX_CHARS = 2000  # longer queries are truncated (with a warning); the model sees max_length tokens anyway


def model_folder(path: str | Path) -> Path:
    path = Path(path)
    return path / "adapter" if (path / "adapter").is_dir() else path


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    clean = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i + 1}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise DataError(f"text {i + 1}: empty text")
        if len(text) > MAX_CHARS:
            log.warning("text %d: %d characters, truncated to %d", i + 1, len(text), MAX_CHARS)
            text = text[:MAX_CHARS]
        clean.append(text.strip())
    return clean


class Predictor:
    def __init__(self, model: torch.nn.Module, tokenizer, spec: ModelSpec, batch_size: int = 64):
        self.model, self.tokenizer, self.spec, self.batch_size = model, tokenizer, spec, batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, batch_size: int = 64) -> "Predictor":
        model, spec = load_model(model_folder(path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), load_tokenizer(spec.base_model), spec, batch_size)

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> np.ndarray:
        texts = [preprocess(t, self.spec.preprocessing) for t in check_texts(texts)]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for positions, batch in encode_batches(self.tokenizer, texts, self.spec.max_length, self.batch_size):
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            out[positions] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts) / self.spec.temperature)

    def predict(self, texts: list[str] | str, top_k: int = 3) -> list[dict]:
        """One dict per text: ``text``, ``intent``, ``confidence``, ``top_k`` ([{intent, confidence}])."""
        texts = check_texts(texts)
        probs = self.probabilities(texts)
        top_k = max(1, min(top_k, len(self.labels)))
        results = []
        for text, row in zip(texts, probs):
            order = np.argsort(-row)[:top_k]
            ranked = [{"intent": self.labels[i], "confidence": round(float(row[i]), 6)} for i in order]
            results.append({"text": text, "intent": ranked[0]["intent"], "confidence": ranked[0]["confidence"], "top_k": ranked})
        return results
