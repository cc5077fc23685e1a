"""What to label next: ``bankintent select RUN --input QUERIES --budget N`` picks the N unlabelled
queries most worth a person's labelling time (active learning).

Uncertainty alone picks near-copies: the queries a model is least sure of crowd around the same few
intent boundaries, often as paraphrases of one another, and labelling ten of them teaches little more
than one. So the pick balances uncertainty with diversity, as cluster-margin sampling does (Citovsky
et al., 2021): the ``CANDIDATES`` x N queries of smallest *margin* (the calibrated probability of the
most probable intent minus that of the second; the logits' margin orders those that round to 1) are
clustered into N groups by k-means on the model's embedding, and each group gives its least certain
query. The result is deterministic for a seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from bankintent.data import write_sheet
from bankintent.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CANDIDATES = 3  # uncertain candidates per query picked; 1 is uncertainty alone
# the sheet to label; out_of_scope: the model's fallback turns the query away, so predicted_intent is only its closest intent
COLUMNS = ["rank", "row", "text", "predicted_intent", "out_of_scope", "confidence", "margin", "label"]


def margins(scores: np.ndarray) -> np.ndarray:
    """The largest minus the second largest of each row of ``scores`` (probabilities, or logits): small
    means uncertain."""
    top = np.sort(scores, axis=1)
    return top[:, -1] - top[:, -2] if scores.shape[1] > 1 else np.ones(len(scores))


def rank(probabilities: np.ndarray, features: np.ndarray, budget: int, seed: int = 42, candidates: int = CANDIDATES,
         logits: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``budget`` queries to label, the least certain first. ``logits`` break the ties of
    probabilities whose margins round to 1 (a sharp temperature, as small data that the model gets all
    right is given): without them such a pool was ranked in file order."""
    margin = margins(probabilities)
    by_margin = np.lexsort((margins(logits), margin)) if logits is not None else np.argsort(margin, kind="stable")
    budget = min(budget, len(margin))
    pool = by_margin[: min(len(margin), candidates * budget)]
    if len(pool) <= budget:
        return pool
    groups = KMeans(n_clusters=budget, n_init=1, random_state=seed).fit_predict(features[pool])
    # pool is in margin order, so a group's first member is its least certain one
    _, first = np.unique(groups, return_index=True)
    picked = pool[np.sort(first)]
    return picked


def labelled_queries(run: str | Path) -> set[str]:
    """The queries (``query_key``) the run's data labels: every row of its training file (those a
    ``--shots`` draw left out too), its validation and test files and its out-of-scope rows (a test query
    labelled again and trained on would flatter the next evaluation); empty where the run records no data
    (an export) or the data has moved."""
    from bankintent.data import query_key
    from bankintent.evaluation import trained_splits

    splits = trained_splits(run, undrawn=True)
    if splits is None:
        return set()
    test = splits.test.texts if splits.test is not None else []
    return {query_key(t) for t in splits.train.texts + splits.validation.texts + test + splits.out_of_scope.texts
            + splits.test_out_of_scope.texts}


def select(run: str | Path, input: str | Path, budget: int, output: str | Path, text_column: str = "text", seed: int = 42,
           overwrite: bool = False) -> dict:
    """Write the ``budget`` queries of ``input`` to label next to ``output`` (CSV: rank, row, the input's
    other columns, text, the model's guess and its margin, an empty ``label`` column); returns a summary.
    An existing ``output`` is replaced only if it is an earlier sheet with no label filled in, or with
    ``overwrite``."""
    from bankintent.data import check_labelling_sheet, query_key, read_queries, with_input_columns
    from bankintent.predict import Predictor, softmax

    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    rows, texts, others = read_queries(input, text_column, columns=True)
    check_labelling_sheet(output, COLUMNS, overwrite)
    labelled = labelled_queries(run)  # a query labelled in an earlier round and trained on is no use picked again
    keys = [query_key(text) for text in texts]
    known = sum(key in labelled for key in keys)
    if known:
        log.info("%s: %d of its %d queries %s labelled in the run's data already, left out", input, known, len(texts),
                 "is" if known == 1 else "are")
    seen = set(labelled)  # and a query asked many times is picked once: its copies after the first are left out
    fresh = [i for i, key in enumerate(keys) if key not in seen and not seen.add(key)]
    rows, texts, others = [rows[i] for i in fresh], [texts[i] for i in fresh], [others[i] for i in fresh]
    if not texts:
        raise DataError(f"{input}: every query is labelled in the run's data already")
    predictor = Predictor.load(run)
    logits, features = predictor.outputs(texts, desc="predicting")
    ranked = softmax(logits.astype(np.float64) / predictor.spec.temperature)  # float32 rounds a sharp one's margins to 1
    picked = rank(ranked, features, budget, seed, logits=logits)
    margin = margins(ranked)
    probabilities = softmax(logits / predictor.spec.temperature)  # as predict computes them: the fallback's thresholds were set so
    guess = probabilities.argmax(1)
    turned_away = predictor.turned_away(predictor.oos_scores(probabilities, features))
    table = pd.DataFrame({
        "rank": np.arange(1, len(picked) + 1), "row": [rows[i] for i in picked], "text": [texts[i] for i in picked],
        "predicted_intent": [predictor.labels[guess[i]] for i in picked], "out_of_scope": turned_away[picked],
        "confidence": np.round(probabilities[picked, guess[picked]], 4), "margin": np.round(margin[picked], 4), "label": "",
    }, columns=COLUMNS)
    table = with_input_columns(table, [others[i] for i in picked])
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_sheet(table, out)
    summary = {"run": str(run), "input": str(input), "queries": len(texts), "selected": len(picked), "output": str(out),
               "median_margin_selected": float(np.median(margin[picked])) if len(picked) else None,
               "median_margin_all": float(np.median(margin)), "seed": seed}
    return summary
