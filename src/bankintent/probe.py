"""The linear probe: a frozen encoder's mean-pooled, normalised embeddings and a logistic regression.

It is the ``linear-probe`` method and the first stage of ``lpft``, whose LoRA fine-tuning starts from
the probe's weights (linear probing then fine-tuning, Kumar et al., ICLR 2022).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from tqdm.auto import tqdm

from bankintent.config import DEFAULT_BASE_MODEL
from bankintent.data import distinct_queries, query_key
from bankintent.evaluation import confused_pairs
from bankintent.modeling import MeanPoolClassifier, ModelSpec, build_model, encode_batches, load_tokenizer

log = logging.getLogger(__name__)


@torch.inference_mode()
def embed(model: MeanPoolClassifier, tokenizer, texts: list[str], max_length: int, batch_size: int = 128, desc: str = "embedding", disable: bool = False) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit="q", disable=disable or not texts) as bar:
        for positions, batch in encode_batches(tokenizer, texts, max_length, batch_size):
            out[positions] = model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().numpy()
            bar.update(len(positions))
    return out


def fit(train_x: np.ndarray, train_y: list[int], val_x: np.ndarray, val_y: list[int], cs: list[float], seed: int,
        choose_on_validation: bool = False, groups: list[str] | None = None):
    """Logistic regression with its regularisation C chosen by stratified k-fold cross-validation on
    the training split (k = 5, or the fewest examples of an intent if fewer, or with ``groups`` as
    ``stratified_folds`` counts them: steadier than the 1,001 validation queries of Banking77),
    refitted on all of it; with ``choose_on_validation`` (small
    training data beside the user's own validation file), C is the one best on validation instead.
    ``groups`` (each row's query as ``data.query_key`` reads it): where the rows hold copies (thin
    intents' repeats, a file's duplicated rows) and every intent has two distinct queries, the folds
    keep a query's copies together (``stratified_folds``); a copy in the fitted folds makes the
    weakest regularisation look best, as it scores the very queries it memorised.
    Returns (classifier, C, validation accuracy; None without validation queries)."""
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    rows = min(np.unique(train_y, return_counts=True)[1]) if len(train_y) else 0
    # an intent of one distinct query (repeated as a thin intent) cannot be held apart from its copies
    fewest = min(distinct_queries(groups, train_y.tolist()).values()) if groups is not None and len(train_y) else rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if (choose_on_validation or fewest < 2) and len(val_y):
            best = None
            for c in cs:  # C chosen on the validation split
                candidate = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x, train_y)
                accuracy = float((candidate.predict(val_x) == val_y).mean())
                if best is None or accuracy > best[2]:
                    best = (candidate, float(c), accuracy)
            clf, c = best[0], best[1]
        else:
            cv = min(5, rows)
            if groups is not None and len(set(groups)) < len(groups) and min(distinct_queries(groups, train_y.tolist()).values()) >= 2:
                cv = stratified_folds(train_y, seed, groups)
            clf = LogisticRegressionCV(Cs=list(cs), cv=cv, scoring="accuracy", max_iter=2000, random_state=seed, n_jobs=-1)
            clf.fit(train_x, train_y)
            c = float(clf.C_[0])
    val_acc = float((clf.predict(val_x) == val_y).mean()) if len(val_y) else None
    return clf, c, val_acc


FOLDS = 5


def stratified_folds(y, seed: int, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (fitted rows, held rows) splits of the labels ``y``: k = ``FOLDS``, or the most
    examples an intent has if fewer. An intent with fewer examples than folds is held out in fewer of
    them, rather than every intent's queries held in fewer, larger folds, each probe then fitted on less
    of the data. ``groups`` (one key a row: the query as ``data.query_key`` reads it) keeps the copies
    of a query in one fold: a copy in another fold would have the probe fitted on the very query it
    scores, and a mislabelled query repeated in a file would look right."""
    y = np.asarray(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only N members"
        if groups is None:
            folds = min(FOLDS, int(np.bincount(y).max()))
            return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
        distinct = {(g, label) for g, label in zip(groups, y)}
        folds = min(FOLDS, max(np.bincount([label for _, label in distinct])), len({g for g, _ in distinct}))
        return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def out_of_fold_logits(train_x: np.ndarray, train_y: list[int], c: float, seed: int, groups: list[str]) -> np.ndarray | None:
    """Each training query's logits from a probe of regularisation ``c`` fitted without it or a copy of
    it (``stratified_folds``; ``groups``: each row's query as ``data.query_key`` reads it, where the rows
    hold copies: a file's duplicated rows, thin intents' repeats); None where an intent has a single
    distinct query, or the folds leave one out of a probe.
    Why: small data has no validation split, and a probe's logits for the queries it was fitted on are
    surer than for new ones; out of fold, the head (not the encoder, which saw them all) is as new to
    each query as to a user's."""
    train_y = np.asarray(train_y)
    labels = np.unique(train_y)
    if min(distinct_queries(groups, train_y.tolist()).values()) < 2:
        return None
    copies = len(set(groups)) < len(groups)
    out = np.zeros((len(train_y), len(labels)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for fitted, held in stratified_folds(train_y, seed, groups if copies else None):
            if len(np.unique(train_y[fitted])) < len(labels):  # every query of an intent held at once
                return None
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x[fitted], train_y[fitted])
            out[held] = logits(clf, train_x[held])
    return out


def head_weights(clf: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a linear head with one row per class giving ``clf``'s probabilities through a
    softmax. With two classes scikit-learn keeps one row, w, for the second class's log-odds: the head
    gets -w/2 and w/2, whose softmax is that sigmoid (copying the single row into both would make the
    two logits equal, every query a coin toss)."""
    weight, bias = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return weight, bias


def logits(clf: LogisticRegression, x: np.ndarray) -> np.ndarray:
    """The logits the head loaded with ``head_weights(clf)`` gives for embeddings ``x``."""
    weight, bias = head_weights(clf)
    return x @ weight.T + bias


def load_into_head(model: MeanPoolClassifier, clf: LogisticRegression) -> None:
    weight, bias = head_weights(clf)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))


def embed_texts(texts: list[str], base_model: str = DEFAULT_BASE_MODEL, max_length: int = 64, desc: str = "embedding",
                progress: bool = True, allow_pickle: bool = False) -> np.ndarray:
    """The frozen base model's mean-pooled, L2-normalised embeddings (the linear probe's input)."""
    model = build_model(ModelSpec(base_model=base_model, method="linear-probe", pooling="mean", labels=["_"]), allow_pickle=allow_pickle)
    return embed(model, load_tokenizer(base_model), texts, max_length, desc=desc, disable=not progress)


def confused_intents(splits, cfg, pairs: int = 10) -> list[dict]:
    """The first run of ``--augment confused-pairs``: a linear probe of the frozen base model fitted on
    the (preprocessed) training split; returns its ``pairs`` most confused intent pairs on validation."""
    x = embed_texts(splits.train.texts + splits.validation.texts, cfg.base_model, cfg.max_length, desc="augment: first run",
                    allow_pickle=cfg.allow_pickle)
    train_x, val_x = x[:len(splits.train)], x[len(splits.train):]
    clf, _, _ = fit(train_x, splits.ids(splits.train), val_x, splits.ids(splits.validation), cfg.probe_c, cfg.seed,
                    groups=[query_key(t) for t in splits.train.texts])
    y_true = splits.ids(splits.validation)
    return confused_pairs(splits.validation.texts, y_true, clf.predict(val_x), splits.labels, top=pairs, examples=1)
