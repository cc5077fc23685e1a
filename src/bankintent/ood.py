"""Out-of-scope (OOS) scores: how unlike every intent of the model a query is. Higher means more out of scope.

- ``msp``: 1 - the calibrated maximum softmax probability (Hendrycks & Gimpel, 2017).
- ``mahalanobis``: the squared Mahalanobis distance of the query's embedding (the classifier head's
  input) to the nearest intent centroid, with one covariance shared by all intents, estimated with
  Ledoit-Wolf shrinkage (Lee et al., 2018). Centroids and the whitening matrix are fitted on the
  training split and stored in the model folder (``ood.safetensors``).
- ``knn``: 1 - the cosine similarity of the query's embedding to the nearest of the intents'
  prototypes (k-nearest-neighbour distance, Sun et al., 2022, with ``KNN_K`` = 1): each intent's
  training embeddings summarised by ``KNN_PROTOTYPES`` k-means centroids. Both sides are centred on
  the training embeddings' mean (``knn_centre``) before the cosine: mean-pooled sentence embeddings
  share a large common direction (every banking query has it), which makes any two banking queries
  look alike by cosine, the request that no intent covers included; without it, what tells queries
  apart weighs less. In the held-out-intents protocol centring caught more of the held-out intents'
  validation queries at the same coverage. It needs no assumption about
  the shape of an intent's cluster, and a banking request that no intent covers usually lies between
  intents, where a single centroid can still be near: in the held-out-intents protocol
  (``benchmarks/out_of_scope.py``, docs/results/out_of_scope) it caught far more in-domain
  out-of-scope queries than Mahalanobis at the same coverage. Prototypes rather than every training
  query: a stray training query no longer vouches for the out-of-scope queries near it, and the bank
  is a fraction of the size, which makes the score cheap beside the forward pass; there they caught
  as many of the held-out intents' validation queries as the whole training split (with ``msp``, as
  the default combines them). ``KNN_K`` and ``KNN_PROTOTYPES`` were chosen on those queries.
  The prototypes (float16) and the centre are stored in ``ood.safetensors``; a model folder saved
  before the centre was (no ``knn_centre``) keeps its uncentred cosine.
- ``knn+msp``: ``knn`` plus ``COMBINED_WEIGHT`` times ``msp``, each standardised by its mean and
  standard deviation on the validation queries (stored as ``knn_msp_scale``). The two see different
  things: ``knn`` how far a query lies from every intent's prototypes, ``msp`` how much the
  classifier hesitates between intents; a banking request no intent covers is often near some
  intent's queries yet between two intents. In the held-out-intents protocol the sum caught more in-domain
  out-of-scope queries than either alone, and ``COMBINED_WEIGHT`` was chosen there on the held-out
  intents' validation queries.
- ``knn+msp+rmd``: ``knn+msp`` plus ``RMD_WEIGHT`` times the relative Mahalanobis distance (Ren et
  al., 2021), standardised on the validation queries (``rmd_scale``) and counted only where positive
  (``rmd_evidence``): the Mahalanobis distance to the nearest intent minus that to one Gaussian of all
  training embeddings (``background``). Plain Mahalanobis counts every direction in which banking
  queries vary as distance; the relative one cancels what all intents share, which leaves how unlike
  any one intent a banking request is.

A query is out of scope when its score exceeds a threshold, chosen on the validation split so that a
target share of in-scope queries (the coverage, default 0.95) stays in scope: the score of rank
ceil(coverage (n + 1)) among the n validation queries (``threshold_for_new_queries``), the rule of split
conformal prediction, which answers at least that share of new queries like them on average (their
own quantile answers about 1/n less of new queries than of them), where n is large enough: at least
coverage / (1 - coverage), 19 for 0.95; with fewer, the threshold answers each of them and n / (n + 1)
of new ones (``expected_coverage``), short of the target, as training warns. The share it answers of
such new queries follows a Beta distribution set by that rank, whence the interval metrics.json gives
(``coverage_interval``), wide where the validation split is small.

How many out-of-scope queries a threshold catches (recall) is measured on out-of-scope examples: the
user's own (rows labelled ``out_of_scope`` in their data, ``--oos-file``), else, for a model whose
intents are Banking77's or some of them, the built-in probe set (``resources/out_of_scope.txt``:
unrelated questions, chit-chat and banking requests outside the Banking77 intents, written for this
project and never trained on). The probe set is never used for other intents: for a bank whose intents
include ``open_account`` its "how do I open a joint account" is in scope. The user's own examples also
choose the score (the one catching the most of them at its threshold, ``choose``); otherwise
``DEFAULT_SCORE`` is used, chosen by the held-out-intents protocol, since the probe set is mostly
chatter that every score catches. With no examples no AUROC
or recall is reported.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from importlib import resources

import numpy as np
from scipy.stats import beta
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from bankintent.errors import ConfigError, ModelError

SCORES = ("msp", "mahalanobis", "knn", "knn+msp", "knn+msp+rmd")
# The score used when there are no out-of-scope examples to choose on, chosen by the held-out-intents
# protocol's validation results (benchmarks/out_of_scope.py): of the scores that measure how far a
# query lies from the intents' training queries, kNN caught more of the held-out intents' validation
# queries than Mahalanobis; adding msp's hesitation between intents caught more, and the relative
# Mahalanobis distance more still, on each of the protocol's seeds.
DEFAULT_SCORE = "knn+msp+rmd"
DEFAULT_REASON = "default (chosen by the held-out-intents protocol)"
NO_EXAMPLES = ": no out-of-scope examples"
TRAINED_ON = ("; the out-of-scope examples did not choose it, since with small data the thresholds are set on queries the encoder "
              "trained on, which favours the scores that turn away the most new in-scope queries")
KNN_K = 1
KNN_BANK = 20_000  # most embeddings kept for the knn score without labels (a seeded sample of larger sets)
KNN_PROTOTYPES = 12  # k-means centroids of each intent's training embeddings that the knn score compares with
COMBINED_WEIGHT = 0.25  # msp's weight in knn+msp
STANDARDISED = ("knn+msp", "knn+msp+rmd")  # counted in in-scope standard deviations, of either sign
FAR_DEVIATIONS = 3.0  # a threshold this many of them from the trained one is warned about (far_from_trained)
RMD_WEIGHT = 0.25  # the relative Mahalanobis distance's weight in knn+msp+rmd
# The least standard deviation msp is divided by in knn+msp: a model sure of nearly every validation
# query (a few easy intents, a sharp temperature) has msp all but constant there, and a query it is
# 99% sure of would otherwise count as many deviations out, outweighing the kNN distance. On Banking77
# validation msp varies far more than this, and the floor changes nothing.
MSP_STD_FLOOR = 0.01
# the arrays of ood.safetensors each score needs
NEEDS = {"msp": (), "mahalanobis": ("centroids",), "knn": ("knn_bank",), "knn+msp": ("knn_bank", "knn_msp_scale"),
         "knn+msp+rmd": ("knn_bank", "knn_msp_scale", "centroids", "background", "rmd_scale")}
PROBE_SET = "the built-in probe set (resources/out_of_scope.txt)"
PROBE_FILE = "bankintent/resources/out_of_scope.txt"  # its queries' file (in the package), in <split>_out_of_scope.csv
COVERAGES = (1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


def probe_lines() -> list[tuple[int, str]]:
    """(line number, query) of each out-of-scope probe query (one a line; ``#`` lines are comments)."""
    text = resources.files("bankintent").joinpath("resources/out_of_scope.txt").read_text(encoding="utf-8")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.startswith("#")]


def probe_set() -> list[str]:
    """The out-of-scope probe queries."""
    return [query for _, query in probe_lines()]


def banking77_intents() -> set[str]:
    text = resources.files("bankintent").joinpath("resources/banking77_intents.txt").read_text(encoding="utf-8")
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def banking77_like(labels) -> bool:
    """Whether the built-in probe set suits a model with these intents: all are Banking77 intents."""
    return bool(labels) and set(labels) <= banking77_intents()


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, np.ndarray]:
    """Intent centroids and a whitening matrix ``W`` (``W @ W.T`` = the shared precision matrix), both
    whitened so that a distance is a plain squared Euclidean distance after ``features @ W``."""
    features = features.astype(np.float64)
    centroids = np.stack([features[labels == c].mean(0) if (labels == c).any() else np.zeros(features.shape[1])
                          for c in range(num_labels)])
    residuals = features - centroids[labels]
    # every intent one query (small data's half of two examples an intent): no spread within an intent
    # to fit, and a covariance of zeros; the spread of all the queries stands in for it
    covariance = LedoitWolf().fit(residuals if residuals.any() else features).covariance_ if len(features) > 1 else None
    if covariance is None or not np.trace(covariance) > 0:  # one query in all: plain Euclidean distances
        covariance = np.eye(features.shape[1])
    whitening = _whitening(covariance)
    return {"centroids": (centroids @ whitening).astype(np.float32), "whitening": whitening.astype(np.float32)}


def _whitening(covariance: np.ndarray, precision: np.ndarray | None = None) -> np.ndarray:
    """``W`` with ``W @ W.T`` the inverse of ``covariance`` (``precision`` where given); for one that
    cannot be inverted, that of its mean variance on every axis: plain distances, scaled. Two intents of
    two queries leave each half one row an intent, which LedoitWolf shrinks not at all: a singular
    covariance, and training ended in LinAlgError."""
    try:
        return np.linalg.cholesky(np.linalg.inv(covariance) if precision is None else precision)
    except np.linalg.LinAlgError:
        return np.eye(len(covariance)) / np.sqrt(np.trace(covariance) / len(covariance))


def fit_background(features: np.ndarray) -> dict[str, np.ndarray]:
    """One Gaussian of every training embedding, whatever its intent (the "background" of Ren et al.,
    2021), as a whitening matrix and its centre after whitening, stacked into ``background``."""
    features = features.astype(np.float64)
    if np.ptp(features, axis=0).any():  # (not the trace: rounding leaves identical rows a covariance of 1e-30s)
        fitted = LedoitWolf().fit(features)
        location, whitening = fitted.location_, _whitening(fitted.covariance_, fitted.precision_)
    else:  # every embedding the same (one query, or queries cut to no words): plain Euclidean distances
        location, whitening = features.mean(0), np.eye(features.shape[1])
    return {"background": np.vstack([location @ whitening, whitening]).astype(np.float32)}


def relative_mahalanobis(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """The relative Mahalanobis distance (Ren et al., 2021): the distance to the nearest intent minus the
    distance to the background. What every banking query shares (its register, its vocabulary) widens
    both alike and cancels, so a query near the intents' region but in none of them stands out."""
    centre, whitening = stats["background"][0], stats["background"][1:]
    z = features.astype(np.float32) @ whitening - centre
    return mahalanobis(features, stats) - (z * z).sum(1)


def mahalanobis(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``features`` to its nearest intent centroid."""
    z = features.astype(np.float32) @ stats["whitening"]
    centroids = stats["centroids"]
    distances = (z * z).sum(1, keepdims=True) - 2 * z @ centroids.T + (centroids * centroids).sum(1)
    return np.maximum(distances.min(1), 0.0)


def _unit(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)


def fit_knn(features: np.ndarray, labels: np.ndarray | None = None, seed: int = 0,
            prototypes: int = KNN_PROTOTYPES) -> dict[str, np.ndarray]:
    """The embeddings the knn score compares with, centred on their mean (``knn_centre``) and of unit
    length, float16. With ``labels``, each intent's training embeddings are summarised by
    ``prototypes`` k-means centroids (an intent with no more distinct examples keeps them all); without, the
    embeddings themselves, at most ``KNN_BANK``."""
    centre = features.astype(np.float32).mean(0)
    unit = _unit(features - centre)
    if labels is not None:
        parts = []
        for label in np.unique(labels):
            own = unit[labels == label]
            if len(own) > prototypes:  # repeated queries: k-means cannot find more centres than distinct points
                distinct = np.unique(own, axis=0)
                own = _unit(KMeans(prototypes, n_init=3, random_state=seed).fit(own).cluster_centers_) \
                    if len(distinct) > prototypes else distinct
            parts.append(own)
        unit = np.concatenate(parts)
    elif len(unit) > KNN_BANK:
        unit = unit[np.random.default_rng(seed).choice(len(unit), KNN_BANK, replace=False)]
    return {"knn_bank": unit.astype(np.float16), "knn_centre": centre}


def for_scoring(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``stats`` ready for scoring: the float16 arrays in float32 once, rather than converted on every
    call; the kNN bank as ``knn_bank_t``, float32 and transposed into contiguous memory, the layout in
    which a BLAS product with a few queries reads it fastest (``knn_bank`` stays as stored, for
    ``supports``, so the model holds one float32 copy of the bank, not two)."""
    ready = {name: value.astype(np.float32) if value.dtype == np.float16 and name != "knn_bank" else value
             for name, value in stats.items()}
    if "knn_bank" in ready:
        ready["knn_bank_t"] = np.ascontiguousarray(ready["knn_bank"].T, dtype=np.float32)
    return ready


def knn(features: np.ndarray, stats: dict[str, np.ndarray], k: int = KNN_K) -> np.ndarray:
    """1 - the cosine similarity of each row of ``features`` to its ``k``-th nearest training embedding,
    both centred on ``knn_centre`` (where the model folder has one)."""
    bank_t = stats["knn_bank_t"] if "knn_bank_t" in stats else stats["knn_bank"].astype(np.float32, copy=False).T
    centre = stats.get("knn_centre")
    similarity = _unit(features if centre is None else features - centre) @ bank_t
    k = min(k, similarity.shape[1])
    if k == 1:  # a plain maximum: a partition costs more than the product itself for one query
        return 1.0 - similarity.max(1)
    return 1.0 - -np.partition(-similarity, k - 1, axis=1)[:, k - 1]


def _mean_std(scores: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """[mean, standard deviation] of in-scope (validation) scores, the deviation at least ``floor``."""
    return np.array([scores.mean(), max(scores.std(), floor)], dtype=np.float32)


def fit_combination(knn_scores: np.ndarray, msp_scores: np.ndarray) -> dict[str, np.ndarray]:
    """The scale of ``knn+msp``: the mean and standard deviation of each part on in-scope
    (validation) queries, msp's at least ``MSP_STD_FLOOR``."""
    return {"knn_msp_scale": np.concatenate([_mean_std(knn_scores), _mean_std(msp_scores, MSP_STD_FLOOR)])}


def combined(knn_scores: np.ndarray, msp_scores: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """``knn+msp``: the standardised knn score plus ``COMBINED_WEIGHT`` times the standardised msp."""
    knn_mean, knn_std, msp_mean, msp_std = stats["knn_msp_scale"]
    return (knn_scores - knn_mean) / knn_std + COMBINED_WEIGHT * (msp_scores - msp_mean) / msp_std


def fit_rmd_scale(rmd_scores: np.ndarray) -> dict[str, np.ndarray]:
    """The scale of the relative Mahalanobis distance in ``knn+msp+rmd``: its mean and standard
    deviation on in-scope (validation) queries."""
    return {"rmd_scale": _mean_std(rmd_scores)}


def rmd_evidence(standardised: np.ndarray) -> np.ndarray:
    """The relative Mahalanobis distance's part in ``knn+msp+rmd``: its standardised value where positive,
    else 0. It tells a query that lies among the intents but nearer to none of them (the banking request
    no intent covers); a query far from all of them (chatter) is as far from the background, and its
    relative distance can fall below every in-scope query's: with a few intents it ranked the probe
    set's chatter as the most in scope of all, and the sum then caught almost none of it. Cut at 0, it
    only ever adds evidence; the held-out-intents protocol's recalls did not change (docs/results/out_of_scope)."""
    return np.maximum(standardised, 0.0)


def fit_scales(probabilities: np.ndarray, features: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scales of the combined scores, from the in-scope validation queries' calibrated
    probabilities and embeddings, given the training statistics (``fit``)."""
    ready = for_scoring(stats)
    return {**fit_combination(knn(features, ready), 1.0 - probabilities.max(-1)),
            **fit_rmd_scale(relative_mahalanobis(features, ready))}


def far_from_trained(name: str, threshold: float, trained: float) -> bool:
    """Whether a threshold given for score ``name`` is so far from the trained one that it likely is
    another score's (msp's 0 to 1, Mahalanobis's hundreds): for the combined scores, which count
    in-scope standard deviations and take either sign, over ``FAR_DEVIATIONS`` of them away (a ratio
    means nothing about a score near 0); for the others, which are positive, ten times larger or smaller."""
    if name in STANDARDISED:
        return abs(threshold - trained) > FAR_DEVIATIONS
    return trained > 0 and not trained / 10 <= threshold <= 10 * trained


def _missing(name: str, stats: dict[str, np.ndarray] | None) -> list[str]:
    return [needed for needed in NEEDS[name] if needed not in (stats or {})]


def supports(name: str, stats: dict[str, np.ndarray] | None) -> bool:
    """Whether a model folder's ``ood.safetensors`` arrays (``stats``) hold what score ``name`` needs."""
    return not _missing(name, stats)


def fit(features: np.ndarray, labels: np.ndarray, num_labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Everything the embedding scores need, fitted on the training split's embeddings (the combined
    scores' scales are fitted on validation: ``fit_scales``)."""
    return {**fit_mahalanobis(features, labels, num_labels), **fit_background(features), **fit_knn(features, labels, seed)}


def scores(names: list[str], probabilities: np.ndarray, features: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The OOS scores ``names`` of each query (higher: more out of scope), each part (the kNN distance,
    the msp, the relative Mahalanobis distance) computed once however many of the scores share it."""
    for name in names:
        if name not in SCORES:
            raise ConfigError(f"unknown out-of-scope score {name!r}; choose one of {', '.join(SCORES)}")
        missing = _missing(name, stats)
        if missing:
            raise ModelError(f"the model folder's ood.safetensors has no {missing[0]}; the {name} score needs it (retrain, or use msp)")
    msp = 1.0 - probabilities.max(-1)
    knn_scores = knn(features, stats) if any(name.startswith("knn") for name in names) else None
    both = combined(knn_scores, msp, stats) if any(name.startswith("knn+msp") for name in names) else None
    out = {}
    for name in names:
        if name == "msp":
            out[name] = msp
        elif name == "mahalanobis":
            out[name] = mahalanobis(features, stats)
        elif name == "knn":
            out[name] = knn_scores
        elif name == "knn+msp":
            out[name] = both
        else:
            rmd_mean, rmd_std = stats["rmd_scale"]
            out[name] = both + RMD_WEIGHT * rmd_evidence((relative_mahalanobis(features, stats) - rmd_mean) / rmd_std)
    return out


def score(name: str, probabilities: np.ndarray, features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """The OOS score ``name`` of each query (higher: more out of scope)."""
    return scores([name], probabilities, features, stats)[name]


def _check_coverage(coverage: float) -> None:
    if not 0 < coverage <= 1:
        raise ConfigError(f"oos_coverage must be in (0, 1], got {coverage}")


def threshold_for_coverage(in_scope_scores: np.ndarray, coverage: float) -> float:
    """The threshold that keeps ``coverage`` of the given in-scope queries in scope (what an evaluated
    file's queries need; a threshold for new queries is ``threshold_for_new_queries``)."""
    _check_coverage(coverage)
    return float(np.quantile(in_scope_scores, coverage, method="inverted_cdf"))


def new_query_rank(n: int, coverage: float) -> int:
    """The rank (from 1, lowest first) among ``n`` in-scope validation scores of the threshold that
    answers ``coverage`` of new in-scope queries on average: ceil(coverage (n + 1)), or ``n`` where the
    validation queries are too few for that (the threshold then answers each of them)."""
    _check_coverage(coverage)
    return max(1, min(n, math.ceil(coverage * (n + 1) - 1e-9)))  # 1e-9: 0.95 * 20 is 19.000000000000004


def expected_coverage(n: int, coverage: float) -> float:
    """The share of new in-scope queries the threshold set on ``n`` validation queries answers on
    average: ``coverage`` or a little more, or less where ``n`` is too small to reach it."""
    return new_query_rank(n, coverage) / (n + 1)


def threshold_for_new_queries(in_scope_scores: np.ndarray, coverage: float) -> float:
    """The threshold training sets: the validation score of rank ``new_query_rank``. The queries' own
    ``coverage`` quantile answers about 1/n less of new queries than it does of them, a gap that
    matters on a validation file of a few dozen queries."""
    return float(np.sort(in_scope_scores)[new_query_rank(len(in_scope_scores), coverage) - 1])


def coverage_interval(n: int, coverage: float, level: float = 0.9) -> tuple[float, float]:
    """Where the share of new in-scope queries that ``threshold_for_new_queries`` answers lies, with
    probability ``level``, for queries exchangeable with the ``n`` validation ones: the threshold is
    their k-th lowest score, and the share of new queries scoring at most that follows Beta(k, n + 1 - k)."""
    k = new_query_rank(n, coverage)
    low, high = beta.ppf([(1 - level) / 2, (1 + level) / 2], k, n + 1 - k)
    return float(low), float(high)


def choose(val_scores: dict[str, np.ndarray], example_scores: dict[str, np.ndarray], coverage: float) -> str:
    """The score that catches the most out-of-scope examples at its threshold (the one answering
    ``coverage`` of new in-scope queries, ``threshold_for_new_queries``): the operating point the model will
    serve at, where two scores with the same AUROC can catch very different shares. Ties go to the
    better AUROC, then to ``DEFAULT_SCORE``."""
    def merit(name: str) -> tuple:
        threshold = threshold_for_new_queries(val_scores[name], coverage)
        return (float((example_scores[name] > threshold).mean()), auroc(val_scores[name], example_scores[name]), name == DEFAULT_SCORE)

    return max(val_scores, key=merit)


def auroc(in_scope_scores: np.ndarray, out_of_scope_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling out-of-scope from in-scope queries by the score (1: perfect)."""
    truth = np.r_[np.zeros(len(in_scope_scores)), np.ones(len(out_of_scope_scores))]
    return float(roc_auc_score(truth, np.r_[in_scope_scores, out_of_scope_scores]))


def coverage_curve(scores: np.ndarray, correct: np.ndarray, oos_scores: np.ndarray | None,
                   coverages=COVERAGES) -> list[dict]:
    """Rows of (coverage, threshold, accuracy on the queries kept, share of the out-of-scope examples
    flagged: NaN without examples)."""
    rows = []
    for coverage in coverages:
        threshold = threshold_for_coverage(scores, coverage)
        kept = scores <= threshold
        rows.append({
            "coverage": coverage,
            "threshold": threshold,
            "kept": float(kept.mean()),
            "accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
            "oos_recall": float((oos_scores > threshold).mean()) if oos_scores is not None and len(oos_scores) else float("nan"),
        })
    return rows


def threshold_text(threshold: float, digits: int = 6) -> str:
    """A threshold to copy into --oos-threshold: ``digits`` significant digits, rounded up, so that every
    query it answered is answered still (a query is answered where its score is at most the threshold);
    the 17 digits of a float read as a precision the threshold does not have."""
    exact = Decimal(repr(float(threshold)))
    if not exact.is_finite() or exact.is_zero():
        return repr(float(threshold))
    return format(exact.quantize(Decimal(1).scaleb(exact.adjusted() - digits + 1), rounding=ROUND_CEILING).normalize(), "f")
