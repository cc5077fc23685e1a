"""Prediction: ``Predictor.load(DIR).predict(["I lost my card"])``.

``DIR`` is a training run's output folder (its ``adapter/`` is used), a model folder, or a folder
written by ``bankintent export``: ``Predictor.load`` is the one entry point for every backend.

- PyTorch: LoRA weights are merged into the base model at load time, so inference costs what the
  bare model costs.
- ONNX Runtime: a folder with ``model.onnx`` (fp32 or int8), ``tokenizer.json`` and the labels.

Both backends return the logits and the classifier head's input (the query embedding), which the
Mahalanobis out-of-scope score needs. Queries are tokenized by the Rust ``tokenizers`` library,
sorted by length and cut into batches, each padded to its longest query only. On a CPU a matrix
product costs what its padded tokens cost, and a batch of 64 queries as a client sends them pads most
of them to a length several times theirs: the batches are small (``CPU_BATCH``), and cut further
where a query much longer than its neighbours would pad them by more than a forward pass's own fixed
cost (``length_batches``; ``benchmarks/latency.py`` and ``benchmarks/batch_cost.py`` measure both).

A query's answer does not depend on the queries batched with it (the service batches concurrent
requests): padding is masked out of attention and pooling, and the int8 export's activation scales
are constants (``bankintent.export``), so alone or in any batch a query gets the same intent and
confidence, to float rounding (``tests/test_batch_independence.py``).
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tokenizers
import torch
from peft import PeftModel
from threadpoolctl import ThreadpoolController
from torch import nn
from tqdm.auto import tqdm

from bankintent import ood
from bankintent.config import MODEL_DIR, export_record
from bankintent.errors import ConfigError, DataError, ModelError
from bankintent.modeling import (LONG_QUERIES_SHARE, MARKER, OOD_FILE, MeanPoolClassifier, ModelSpec, load_model, load_tokenizer, loading,
                                 read_spec)
from bankintent.text import blank, preprocess

log = logging.getLogger(__name__)

MAX_CHARS = 2000  # longer queries are truncated (with a warning); the model sees max_length tokens anyway
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
OUT_OF_SCOPE = "out_of_scope"
CPU_BATCH = 8  # queries per forward pass on a CPU: similar lengths, little padding
GPU_BATCH = 512  # on a GPU: large batches keep it busy
# a forward pass's fixed cost, in tokens' worth of its compute (``length_batches``); measured by
# benchmarks/batch_cost.py (docs/benchmarks.md): a few tokens for the ONNX exports, several times that for PyTorch on a CPU
ONNX_PASS_TOKENS = 8
TORCH_CPU_PASS_TOKENS = 40
# ONNX Runtime fusions left out: on a CPU, the fused SkipLayerNormalization and BiasGelu kernels took
# longer than the Add, LayerNormalization and Gelu they replace, and scaled worse to a second thread
SLOW_FUSIONS = ["SkipLayerNormFusion", "BiasGeluFusion"]


def model_folder(path: str | Path) -> Path:
    path = Path(path)
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path


def default_batch_size(device: torch.device | None) -> int:
    """Queries per forward pass on ``device`` (``None``: ONNX Runtime, on the CPU)."""
    return GPU_BATCH if device is not None and device.type == "cuda" else CPU_BATCH


def length_batches(lengths: np.ndarray, batch_size: int, pass_tokens: float) -> list[np.ndarray]:
    """The forward passes for queries of ``lengths`` tokens: the indices of each pass, at most
    ``batch_size`` of them, of neighbours in length order. On a CPU a pass costs its padded tokens
    (queries x longest) plus a fixed cost of about ``pass_tokens`` tokens, and the cuts minimise that
    sum (dynamic programming over the sorted lengths): the service's micro-batches are a few queries
    of any length, and one pass would pad most of them to several times their length.
    ``pass_tokens`` infinite (a GPU, where padding is nearly free): passes of ``batch_size``."""
    order = np.argsort(lengths, kind="stable")
    if not np.isfinite(pass_tokens):
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    longest = np.asarray(lengths)[order]
    cost, cut = np.zeros(len(order) + 1), np.zeros(len(order) + 1, dtype=int)
    for end in range(1, len(order) + 1):  # cost[end]: the cheapest passes over the first `end` queries
        starts = np.arange(max(0, end - batch_size), end)
        total = cost[starts] + pass_tokens + (end - starts) * longest[end - 1]
        best = int(np.argmin(total))
        cost[end], cut[end] = total[best], starts[best]
    passes, end = [], len(order)
    while end > 0:
        passes.append(order[cut[end] : end])
        end = cut[end]
    return passes[::-1]


class OneBlasThread:
    """A context in which numpy's BLAS uses one thread. The small matrix products after a forward pass
    (the Mahalanobis score) run while PyTorch's or ONNX Runtime's threads still spin on both cores,
    and a two-thread BLAS fighting them for the cores took many times as long as one thread alone.
    The limit is the process's: with threads predicting at once, the first in sets it and the last out
    restores it (each restoring its own would leave the limit of whichever entered second)."""

    def __init__(self):
        self._lock, self._inside, self._limiter = threading.Lock(), 0, None

    def __enter__(self):
        with self._lock:
            if not self._inside:
                self._limiter = _threadpools().limit(limits=1, user_api="blas")
            self._inside += 1

    def __exit__(self, *exc):
        with self._lock:
            self._inside -= 1
            if not self._inside:
                self._limiter.restore_original_limits()


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded libraries once (a few ms)


one_blas_thread = OneBlasThread()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def warn_if_stale(folder: Path) -> None:
    """Warn where ``folder`` is an export of a model saved again since (a retrained run): it answers as
    the model before."""
    exported = export_record(folder)
    source, saved = exported.get("source"), exported.get("source_saved_ns")  # exports before 2026-11-29 have no time
    marker = Path(source or ".") / MARKER
    if source and saved and marker.is_file() and marker.stat().st_mtime_ns != saved:
        log.warning("%s: the model it was exported from (%s) has been saved again since; it answers as the model before: "
                    "export it again (bankintent export ... --overwrite)", folder, source)


# the fields of each answer of ``Predictor.predict``, in order: the service answers with these, Spark with all but the text
ANSWER_FIELDS = ("text", "intent", "confidence", "out_of_scope", "oos_score", "oos_threshold", "oos_method", "closest_intent", "top_k")


def whole_characters(text: str) -> str:
    """``text`` without lone surrogates, which the tokenizer refuses (a TypeError): the bytes of a command
    line that its locale could not decode (UTF-8 typed under a C locale outside Python's UTF-8 mode) read
    as the UTF-8 they most likely are, any other half of a character replaced with U+FFFD."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if len(getattr(texts, "shape", ())) > 1:  # a DataFrame would give its column names
        raise DataError(f"expected a text or a list of texts, got a {type(texts).__name__} of {len(texts.shape)} dimensions; "
                        f"give one column of it, e.g. frame['text']")
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Iterable):  # a dict would give its keys
        raise DataError(f"expected a text or a list of texts, got {type(texts).__name__}")
    index = getattr(texts, "index", None)  # a pandas Series's labels (a list's or a deque's index is a method)
    index = index if hasattr(index, "__getitem__") and hasattr(index, "__len__") else None
    texts = list(texts)  # a tuple, a pandas Series, a NumPy array of strings

    def where(i: int) -> str:
        if index is None or len(index) != len(texts):
            return f"text {i + 1}"
        label = index[i]
        return f"text {i + 1} (index {label!r})" if isinstance(label, str) else f"text {i + 1} (index {label})"

    clean, long = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where(i)}: expected a string, got {type(text).__name__}")
        if blank(text):
            raise DataError(f"{where(i)}: empty text")
        text = whole_characters(text.strip())  # then cut: spaces before a long query are not what is kept of it
        if len(text) > MAX_CHARS:
            long.append(text)
            text = text[:MAX_CHARS].rstrip()
        clean.append(text)
    if long:  # one line for a batch, not one a query: a file of logs has hundreds; no text of a query (a card number)
        log.warning("%d quer%s over %d characters truncated to the first %d (the longest: %d characters)", len(long),
                    "ies" if len(long) > 1 else "y", MAX_CHARS, MAX_CHARS, max(map(len, long)))
    return clean


def fast_tokenizer(tokenizer, max_length: int) -> tokenizers.Tokenizer:
    """A private copy of the Rust tokenizer behind ``tokenizer`` (a Hugging Face tokenizer or a
    ``tokenizers.Tokenizer``) that truncates to ``max_length`` and pads to the longest of a batch."""
    rust = tokenizer if isinstance(tokenizer, tokenizers.Tokenizer) else tokenizer.backend_tokenizer
    padding = rust.padding or {"pad_id": tokenizer.pad_token_id, "pad_token": tokenizer.pad_token}
    copy = tokenizers.Tokenizer.from_str(rust.to_str())
    copy.enable_truncation(max_length)
    copy.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"])
    return copy


def head_module(model: nn.Module) -> nn.Module:
    """The classification layer whose input is the query embedding."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = base.head if isinstance(base, MeanPoolClassifier) else getattr(base, "classifier", None)
    if head is None:
        raise ModelError(f"{type(base).__name__}: no classifier layer found")
    return head


class WithFeatures(nn.Module):
    """``model(input_ids, attention_mask)`` -> (logits, embedding), the embedding being the classifier
    layer's input (caught by a forward pre-hook, so every architecture and PEFT wrapper works)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.head = model, head_module(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        caught, thread = [], threading.get_ident()  # other threads may run the same model meanwhile
        hook = self.head.register_forward_pre_hook(lambda module, args: caught.append(args[0]) if threading.get_ident() == thread else None)
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            hook.remove()
        features = caught[-1]
        return logits, features[:, 0] if features.dim() == 3 else features


class TorchModel:
    """The PyTorch backend: numpy token ids in, numpy (logits, embeddings) out."""

    def __init__(self, model: nn.Module):
        self.module = WithFeatures(model).eval()
        self.device = next(model.parameters()).device
        self.pass_tokens = TORCH_CPU_PASS_TOKENS if self.device.type == "cpu" else float("inf")

    @torch.inference_mode()
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.module(torch.from_numpy(input_ids).to(self.device), torch.from_numpy(attention_mask).to(self.device))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()


class OnnxModel:
    """The ONNX Runtime backend (CPU). ``threads``: intra-op threads (default: every core)."""

    pass_tokens = ONNX_PASS_TOKENS

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=SLOW_FUSIONS)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ModelError(f"{path}: cannot load the ONNX model ({str(exc).splitlines()[0]})") from None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(["logits", "features"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return logits, features


def check_threshold(oos_threshold) -> None:
    """ConfigError unless ``oos_threshold`` is None or a finite number: nan answers every query in scope,
    and an answer's JSON (the service's, a .jsonl file's) has no inf."""
    if oos_threshold is not None and (isinstance(oos_threshold, bool) or not isinstance(oos_threshold, numbers.Real)
                                      or not np.isfinite(oos_threshold)):
        raise ConfigError(f"the out-of-scope threshold must be a finite number, got {oos_threshold!r}")


class Predictor:
    """Intents, calibrated confidences and the out-of-scope decision for queries.

    ``model`` is a PyTorch module (merged, or a PEFT model) or an ``OnnxModel``. The out-of-scope
    decision uses ``oos_score`` (default: the model's, chosen at training) with ``oos_threshold``
    (default: the one chosen on validation for that score); with no threshold nothing is out of scope.
    """

    def __init__(self, model, tokenizer, spec: ModelSpec, batch_size: int | None = None,
                 oos_score: str | None = None, oos_threshold: float | None = None):
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
            raise ConfigError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        check_threshold(oos_threshold)
        self.oos_score = oos_score or spec.oos_score or ("msp" if oos_threshold is not None else None)
        if self.oos_score is not None and self.oos_score not in ood.SCORES:
            raise ConfigError(f"unknown out-of-scope score {self.oos_score!r}; choose one of {', '.join(ood.SCORES)}")
        self.model, self.spec = model, spec
        self.backend = model if isinstance(model, OnnxModel) else TorchModel(model)
        self.batch_size = batch_size or default_batch_size(getattr(self.backend, "device", None))
        self.tokenizer = fast_tokenizer(tokenizer, spec.max_length)
        self.pad_id = self.tokenizer.padding["pad_id"]
        self.said_cut = False  # whether a query longer than max_length tokens has been warned of (once: a service sees many)
        self.tokenizer.no_padding()  # batches are padded after sorting by length (``outputs``)
        trained = spec.oos_thresholds.get(self.oos_score)
        self.oos_threshold = oos_threshold if oos_threshold is not None else trained
        if oos_threshold is not None and trained is not None and ood.far_from_trained(self.oos_score, oos_threshold, trained):
            # a threshold is on one score's scale (msp's is 0-1, Mahalanobis's hundreds): one kept from a model that
            # used another score would turn the fallback off, or everything away, without a word
            log.warning("out-of-scope threshold %g is far from this model's trained %s threshold (%.4g): %s; a threshold is on "
                        "one score's scale, so give the score it is for (--oos-score, oos_score=)", oos_threshold, self.oos_score,
                        trained, "few queries will be out of scope" if oos_threshold > trained else "most queries will be out of scope")
        if oos_score is not None and (self.oos_threshold is None or not ood.supports(oos_score, spec.ood)):
            # a score asked for by name that the model cannot use would silently answer every query in scope
            have = ", ".join(name for name in spec.oos_thresholds if ood.supports(name, spec.ood)) or "none"
            raise ModelError(f"no {oos_score} out-of-scope threshold (the model has: {have})")
        if self.oos_threshold is not None and not ood.supports(self.oos_score, spec.ood):  # else refused at the first query
            raise ModelError(f"no {OOD_FILE}, or one without what its {self.oos_score} out-of-scope score needs: an incomplete "
                             f"copy of the model folder? copy it again, or retrain")
        self._stats_of, self._stats = None, {}  # spec.ood as the scores use it (oos_scores)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, batch_size: int | None = None, threads: int | None = None,
             oos_score: str | None = None, oos_threshold: float | None = None, allow_pickle: bool = False) -> "Predictor":
        """A training run, a model folder or an exported ONNX folder. ``device``: PyTorch's (an export
        runs on the CPU); ``threads``: ONNX Runtime only; ``allow_pickle``: accept a base model stored as
        pickled .bin weights."""
        folder = model_folder(path)
        warn_if_stale(folder)
        if (folder / ONNX_FILE).is_file():
            if device not in (None, "cpu"):
                raise ModelError(f"device {device!r}: {folder} is an ONNX export, which runs on the CPU; load the training run's "
                                 f"model folder to run on {device}")
            spec = read_spec(folder)
            with loading(folder):
                model, tokenizer = OnnxModel(folder / ONNX_FILE, threads), tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        else:
            model, spec = load_model(folder, allow_pickle=allow_pickle)
            try:
                model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            except (RuntimeError, AssertionError) as exc:  # an unknown or unavailable device
                raise ModelError(f"device {device!r}: {str(exc).splitlines()[0]}") from None
            tokenizer = load_tokenizer(spec.base_model)
        try:
            return cls(model, tokenizer, spec, batch_size=batch_size, oos_score=oos_score, oos_threshold=oos_threshold)
        except ModelError as exc:
            raise ModelError(f"{folder}: {exc}") from None

    def __repr__(self) -> str:  # what a notebook shows of it: which model, and how it falls back
        fallback = f"{self.oos_score} > {ood.threshold_text(self.oos_threshold)}" if self.oos_threshold is not None else "none"
        backend = "ONNX Runtime" if isinstance(self.backend, OnnxModel) else f"PyTorch on {self.backend.device}"
        return (f"Predictor({len(self.labels)} intents, {self.spec.method} on {self.spec.base_model}, {backend}, "
                f"out of scope: {fallback})")

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def pad(self, encodings: list[tokenizers.Encoding]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (int64), padded to the longest of ``encodings``."""
        ids = np.full((len(encodings), max(len(e.ids) for e in encodings)), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask

    def outputs(self, texts: list[str], desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of ``texts``, computed in batches of texts of similar length in tokens;
        with a progress bar titled ``desc`` if given."""
        return self._outputs(check_texts(texts), desc)

    def _outputs(self, texts: list[str], desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``outputs`` of texts that ``check_texts`` has passed."""
        texts = [preprocess(t, self.spec.preprocessing) for t in texts]
        if not texts:
            raise DataError("no texts given")
        encodings = self.tokenizer.encode_batch(texts)
        cut = 0 if self.said_cut else sum(bool(encoding.overflowing) for encoding in encodings)  # once said: no scan
        if cut:  # the model reads max_length tokens, as it trained: said as training says it (a warning from 1%)
            self.said_cut = True  # no text of the query: a service's log would keep what customers wrote
            log.log(logging.WARNING if cut >= LONG_QUERIES_SHARE * len(texts) else logging.INFO,
                    "queries longer than the model's max_length of %d tokens are read to their first %d, as in training "
                    "(--max-length sets it): %d of %d in this batch (said once)", self.spec.max_length, self.spec.max_length,
                    cut, len(texts))
        passes = length_batches(np.array([len(e.ids) for e in encodings]), self.batch_size, self.backend.pass_tokens)
        logits, features = [], []
        with tqdm(total=len(texts), desc=desc, unit="q", disable=desc is None) as bar:
            for indices in passes:
                batch_logits, batch_features = self.backend(*self.pad([encodings[i] for i in indices]))
                logits.append(batch_logits)
                features.append(batch_features)
                bar.update(len(batch_logits))
        inverse = np.argsort(np.concatenate(passes))
        logits = np.concatenate(logits)[inverse]
        broken = ~np.isfinite(logits).all(-1)
        if broken.any():  # else answered in scope with a confidence of nan, whatever the threshold
            raise ModelError(f"the model's outputs are not numbers (nan or inf) for {broken.sum()} of {len(texts)} texts, the first "
                             f"text {np.argmax(broken) + 1}: its weights hold nan or inf (a training that diverged: a lower "
                             f"learning rate) or its export is broken")
        return logits, np.concatenate(features)[inverse]

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.outputs(texts)[0]

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts) / self.spec.temperature)

    def _scoring_stats(self) -> dict[str, np.ndarray]:
        if self._stats_of is not self.spec.ood:  # calibration replaces spec.ood while it runs
            self._stats_of, self._stats = self.spec.ood, ood.for_scoring(self.spec.ood)
        return self._stats

    def oos_scores(self, probabilities: np.ndarray, features: np.ndarray, name: str | None = None) -> np.ndarray:
        """Out-of-scope score ``name`` (default: this predictor's) of each query; higher: more out of scope."""
        return ood.score(name or self.oos_score or "msp", probabilities, features, self._scoring_stats())

    def turned_away(self, scores: np.ndarray) -> np.ndarray:
        """Whether the fallback answers each query out of scope: its out-of-scope score above the threshold;
        none without a detector."""
        if self.oos_threshold is None:
            return np.zeros(len(scores), dtype=bool)
        return scores > self.oos_threshold

    def every_oos_score(self, probabilities: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """{score name: each query's score} for every out-of-scope score the model folder supports."""
        stats = self._scoring_stats()
        return ood.scores([name for name in ood.SCORES if ood.supports(name, stats)], probabilities, features, stats)

    def predict(self, texts: list[str] | str, top_k: int = 3) -> list[dict]:
        """One dict per text, in the order of ``texts`` (a string, or any iterable of strings: a list, a
        pandas Series, a NumPy array). A text that is empty or only spaces raises ``DataError`` naming
        its position (1-based), as answers are one per text; a file's blank rows are skipped instead
        (``bankintent predict --input``). Each dict:

        - ``intent``: the answer, an intent or ``out_of_scope`` when the out-of-scope score crosses the
          threshold; ``out_of_scope``: whether it did;
        - ``confidence``: the calibrated probability of ``intent``; ``None`` for an out-of-scope answer,
          whose own evidence is ``oos_score`` against ``oos_threshold`` (higher: further from every
          intent; ``oos_method`` names the score; all three ``None`` without a detector);
        - ``closest_intent``: the most probable intent, also when the answer is out of scope;
        - ``top_k``: [{intent, confidence}], the most probable intents."""
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ConfigError(f"top_k must be a whole number of at least 1, got {top_k!r}")
        texts = check_texts(texts)
        if not texts:
            return []
        logits, features = self._outputs(texts)
        probs = softmax(logits / self.spec.temperature)
        if self.oos_threshold is None:
            scores = np.full(len(texts), np.nan)
        else:
            with one_blas_thread:
                scores = self.oos_scores(probs, features)
        top_k = min(top_k, len(self.labels))
        results = []
        for text, row, score, turned in zip(texts, probs, scores, self.turned_away(scores)):
            order = np.argsort(-row)[:top_k]
            ranked = [{"intent": self.labels[i], "confidence": round(float(row[i]), 6)} for i in order]
            detector = not np.isnan(score)
            out = bool(turned)
            results.append({
                "text": text,
                "intent": OUT_OF_SCOPE if out else ranked[0]["intent"],
                "confidence": None if out else ranked[0]["confidence"],
                "out_of_scope": out,
                "oos_score": round(float(score), 6) if detector else None,
                "oos_threshold": round(float(self.oos_threshold), 6) if detector else None,
                "oos_method": self.oos_score if detector else None,
                "closest_intent": ranked[0]["intent"],
                "top_k": ranked,
            })
        return results
