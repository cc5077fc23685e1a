"""Confidence calibration and the out-of-scope fallback, fitted when training ends.

- Temperature scaling fitted on the validation split (Guo et al., 2017); the expected calibration
  error (ECE) before and after. A temperature fitted by likelihood on too few validation queries, or
  on queries all classified right (the likelihood then keeps rising as the temperature falls towards
  0, and every confidence becomes 1.0), would be wrong with confidence. There the temperature is set
  instead so that the mean confidence equals the accuracy estimated with Laplace's rule of succession
  (``accuracy_temperature``), and metrics.json says so (``temperature_rule``, ``temperature_note``).
  Leaving such a model's softmax as it is was worse: a probe regularised on a few dozen queries
  answered even the queries it got right with low confidence.
- The out-of-scope scores of ``bankintent.ood``: the Mahalanobis statistics and the kNN bank are
  fitted on the training split's embeddings; the default score is the one that catches the most
  out-of-scope examples at its threshold (``ood.choose``; ``out_of_scope_examples`` says which
  examples), or ``ood.DEFAULT_SCORE`` without them; each score's threshold is set on the validation
  queries to answer ``cfg.oos_coverage`` of new in-scope queries (``ood.threshold_for_new_queries``),
  and metrics.json gives the interval the share answered lies in (``oos_coverage_interval``).
- Accuracy against coverage (``<split>_coverage.csv`` and ``.png``): the accuracy on the queries kept
  when the least confident are sent to the fallback, the share of the out-of-scope examples caught,
  and the operating point chosen.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from bankintent import ood  # noqa: E402
from bankintent.config import TrainConfig  # noqa: E402
from bankintent.data import OutOfScope, Splits, write_sheet  # noqa: E402
from bankintent.predict import Predictor, softmax  # noqa: E402

log = logging.getLogger(__name__)

# fewer validation queries than this and the likelihood does not choose the temperature (one parameter,
# but the likelihood of a few queries is dominated by the one or two the model gets wrong, or by none)
MIN_TEMPERATURE_QUERIES = 50
TEMPERATURE_RANGE = (0.01, 100.0)  # where ``accuracy_temperature`` searches


class OutOfFold(NamedTuple):
    """Small data's stand-in for the model's logits (its validation split is queries it trained on): the
    probe's logits of each training query from a probe fitted without it (``probe.out_of_fold_logits``)."""

    logits: np.ndarray  # every training query's
    labels: np.ndarray  # their label ids
    held: np.ndarray  # those of the validation split's queries (the held half of the training split)
    given: int  # the distinct queries of the rows the data gave: the evidence, not copies or the intents' names added


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


def accuracy_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature at which the mean top probability of softmax(logits / T) equals the accuracy
    estimated with Laplace's rule of succession, (right + 1) / (queries + 2): all of a few queries
    right says the next one is likely right, not certainly. It calibrates on average only (one bin of
    the ECE), which is what a few queries can tell; the likelihood (``fit_temperature``) also shapes
    how confidence spreads across queries, and needs errors and numbers to do so."""
    right = int((logits.argmax(-1) == labels).sum())
    target = (right + 1) / (len(labels) + 2)
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])  # the mean confidence falls as T rises
    for _ in range(60):
        middle = (low + high) / 2
        if softmax(logits / np.exp(middle)).max(-1).mean() > target:
            low = middle
        else:
            high = middle
    return float(np.exp((low + high) / 2))


def scores_of(predictor: Predictor, logits: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(calibrated probabilities, {score name: out-of-scope scores}) from a predictor's outputs, for
    every score the model folder supports."""
    probs = softmax(logits / predictor.spec.temperature)
    return probs, predictor.every_oos_score(probs, features)


def out_of_scope_examples(splits: Splits, labels: list[str]) -> OutOfScope:
    """The out-of-scope examples to choose the score on and to measure recall with: the user's own
    (rows labelled ``oos_label``, ``oos_file``), else the built-in probe set for Banking77-like
    intents, else none."""
    return splits.out_of_scope if len(splits.out_of_scope) else built_in_examples(labels)


def built_in_examples(labels: list[str]) -> OutOfScope:
    """The built-in probe set, each query with its line in resources/out_of_scope.txt, where the intents
    are Banking77's (or some of them); else none."""
    if not ood.banking77_like(labels):
        return OutOfScope()
    lines, texts = zip(*ood.probe_lines())
    return OutOfScope(list(texts), [ood.PROBE_SET], list(lines), files=[ood.PROBE_FILE])


NOT_REACHED = ", not reached"  # what a temperature note says where the accuracy rule could not reach its target


def temperature_problem(logits: np.ndarray, labels: np.ndarray, queries: str = "validation queries",
                        given: int | None = None) -> str | None:
    """Why the likelihood cannot choose a temperature on these outputs (of ``queries``), or None.
    ``given``: how many of them are the data's own queries, where training added others (the intents'
    names, thin intents' repeats), which are no more evidence of how sure to be of a customer's query."""
    if len(labels) < MIN_TEMPERATURE_QUERIES:
        return f"{len(labels)} {queries}, fewer than {MIN_TEMPERATURE_QUERIES}"
    if given is not None and given < MIN_TEMPERATURE_QUERIES:
        return f"{len(labels)} {queries}, of which {given} the data's own queries, fewer than {MIN_TEMPERATURE_QUERIES}"
    wrong = int((logits.argmax(-1) != labels).sum())
    if wrong == 0:
        return f"every one of the {queries} is classified right, so the likelihood has no best temperature (it would go to 0)"
    return None


def temperature(logits: np.ndarray, labels: np.ndarray, queries: str = "validation queries",
                given: int | None = None) -> tuple[float, str | None, str | None]:
    """(the temperature, the rule that set it, a note saying why where it is not the likelihood's):
    ``fit_temperature`` where the likelihood can choose, else ``accuracy_temperature``; 1.0 with no
    queries at all. ``given``: as ``temperature_problem`` takes it."""
    if not len(labels):
        return 1.0, None, f"not fitted: no {queries}"
    problem = temperature_problem(logits, labels, queries, given)
    if problem is None:
        return fit_temperature(logits, labels), "likelihood", None
    value = accuracy_temperature(logits, labels)
    right = int((logits.argmax(-1) == labels).sum())
    target = (right + 1) / (len(labels) + 2)
    note = (f"{problem}: set so that the mean confidence is the accuracy estimated as ({right} right + 1) / "
            f"({len(labels)} + 2) = {target:.3f}")
    reached = float(softmax(logits / value).max(-1).mean())
    if abs(reached - target) > 0.01:  # at an end of TEMPERATURE_RANGE: outputs too alike (or too apart) to get there
        note += (f"{NOT_REACHED}: the mean confidence is {reached:.3f} at temperature {value:.3g}, the end of the range searched "
                 f"(the model's scores for the intents barely differ: it has learnt little)")
    return value, "accuracy", note


def calibrate(predictor: Predictor, splits: Splits, cfg: TrainConfig,
              out_of_fold: OutOfFold | None = None, queries: str = "validation queries", trained_on: bool = False) -> dict:
    """Fit the temperature, the Mahalanobis statistics, the default out-of-scope score and the
    thresholds into ``predictor.spec``; write ``validation_coverage.{csv,png}`` to ``cfg.output``.
    ``out_of_fold`` (small data): the temperature is fitted on every training query's out-of-fold
    logits, and the held half's stand in for the model's own logits of the validation queries, which
    it is surer of than of a new query, wherever the probabilities count (msp and the thresholds).
    ``trained_on``: the encoder trained on the validation split's queries (small data's held
    half, with a fine-tuned encoder), which lie closer to the training queries than new ones do, by more
    for the distance scores: the thresholds are tighter than they read, so the user's examples do not
    choose the score (they would choose the score its threshold wrongs most, the one turning away the
    most) and the share answered is marked optimistic.
    Returns the metrics: ECE before and after (on the logits the temperature was fitted on), whether,
    on what and why the temperature was fitted, the score chosen and why, its threshold, the
    out-of-scope examples used (source, count), each score's AUROC and the examples' recall at the
    threshold (None without examples). ``queries`` names what the validation split holds, for the
    notes (small data's is half of the training queries)."""
    spec = predictor.spec
    logits, features = predictor.outputs(splits.validation.texts, desc="calibrating")
    labels = np.array(splits.ids(splits.validation))
    if out_of_fold is None:
        fit_logits, fit_labels = logits, labels
    else:
        fit_logits, fit_labels, logits = out_of_fold.logits, out_of_fold.labels, out_of_fold.held
    fitted_on = queries if out_of_fold is None else "training queries' out-of-fold probe logits"
    spec.temperature, rule, note = temperature(fit_logits, fit_labels, fitted_on, None if out_of_fold is None else out_of_fold.given)
    if note:  # the accuracy rule where every query is right is small data's usual case: said; no fit, or one not reached, warned of
        usual = rule == "accuracy" and NOT_REACHED not in note and bool((fit_logits.argmax(-1) == fit_labels).all())
        level = logging.INFO if usual else logging.WARNING
        log.log(level, "temperature %.3g: %s", spec.temperature, note)
    elif rule is not None:
        log.info("temperature %.3g (%s, fitted on the %s)", spec.temperature, rule, fitted_on)
    metrics = {
        "temperature": spec.temperature,
        "temperature_fitted": rule is not None,
        "temperature_rule": rule,
        "temperature_fitted_on": fitted_on,
        "temperature_note": note,
        "val_ece_before": expected_calibration_error(softmax(fit_logits), fit_labels),
        "val_ece_after": expected_calibration_error(softmax(fit_logits / spec.temperature), fit_labels),
    }
    _, train_features = predictor.outputs(splits.train.texts, desc="out-of-scope: embedding train")
    spec.ood = ood.fit(train_features, np.array(splits.ids(splits.train)), len(spec.labels), cfg.seed)
    spec.ood = {**spec.ood, **ood.fit_scales(softmax(logits / spec.temperature), features, spec.ood)}
    probs, val_scores = scores_of(predictor, logits, features)
    examples = out_of_scope_examples(splits, spec.labels)
    oos_scores = None
    if len(examples):
        _, oos_scores = scores_of(predictor, *predictor.outputs(examples.texts, desc="out-of-scope: examples"))
        auroc = {name: ood.auroc(val_scores[name], oos_scores[name]) for name in val_scores}
    else:
        auroc = {name: None for name in val_scores}
    if len(splits.out_of_scope) and not trained_on:  # the user's own examples: their traffic, so they choose
        spec.oos_score = ood.choose(val_scores, oos_scores, cfg.oos_coverage)
        reason = f"catches the most of {examples.describe()} at the threshold"
    elif len(splits.out_of_scope):
        spec.oos_score = ood.DEFAULT_SCORE
        reason = ood.DEFAULT_REASON + ood.TRAINED_ON
        log.info("out-of-scope: small data: the %d out-of-scope examples measure the fallback and do not set it (the score is "
                 "the default, the threshold set to answer %.0f%% of in-scope queries): more of them measure it better, and "
                 "change no answer; measure it on new queries with bankintent evaluate RUN --data FILE, whose test_coverage.csv "
                 "gives the threshold for each share answered (--oos-threshold)", len(splits.out_of_scope), 100 * cfg.oos_coverage)
    else:  # the built-in probe set is mostly chatter, easy for every score: it measures, it does not choose
        spec.oos_score = ood.DEFAULT_SCORE
        reason = ood.DEFAULT_REASON + ("" if len(examples) else ood.NO_EXAMPLES)
        if not len(examples):
            log.warning("out-of-scope: no examples to measure the fallback with (intents are not Banking77's: label some rows "
                        "%r, or --oos-label NAME where your rows have a label of their own, or give --oos-file); using the "
                        "default score, %s", cfg.oos_label, spec.oos_score)
    spec.oos_choice = {"reason": reason, "examples": examples.describe(), "examples_size": len(examples),
                       "coverage": cfg.oos_coverage}  # the share of new in-scope queries the thresholds are set to answer
    spec.oos_thresholds = {name: ood.threshold_for_new_queries(s, cfg.oos_coverage) for name, s in val_scores.items()}
    threshold = spec.oos_thresholds[spec.oos_score]
    predictor.oos_score, predictor.oos_threshold = spec.oos_score, threshold
    recall = float((oos_scores[spec.oos_score] > threshold).mean()) if oos_scores else None
    metrics.update({
        "oos_score": spec.oos_score,
        "oos_score_reason": reason,
        "oos_threshold": threshold,
        "oos_coverage_target": cfg.oos_coverage,
        "oos_examples": examples.describe(),
        "oos_examples_size": len(examples),
        **{f"oos_auroc_{name}": value for name, value in auroc.items()},
        "oos_recall": recall,
        "oos_recall_optimistic": recall is not None and bool(len(splits.out_of_scope)) and not trained_on,  # they chose the score
    })
    if oos_scores:
        chose = (" (they also chose the score, so the share is optimistic: measure it on other examples with "
                 "bankintent evaluate RUN --data FILE)") if metrics["oos_recall_optimistic"] else ""
        log.info("out-of-scope: %s score (AUROC %s on %s), threshold %.4g catches %.1f%% of them%s", spec.oos_score,
                 ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()), examples.describe(), threshold, 100 * recall, chose)
    kept = write_coverage(probs.argmax(-1) == labels, val_scores, oos_scores, predictor, Path(cfg.output), "validation", examples)
    metrics["oos_val_coverage"] = kept.get("coverage")  # the share the threshold answers, beside its target
    metrics["oos_coverage_interval"] = list(ood.coverage_interval(len(labels), cfg.oos_coverage))  # as metrics.json has it
    metrics["oos_coverage_queries"] = len(labels)
    metrics["oos_coverage_expected"] = expected = ood.expected_coverage(len(labels), cfg.oos_coverage)
    metrics["oos_coverage_optimistic"] = trained_on
    low, high = metrics["oos_coverage_interval"]
    short = expected < cfg.oos_coverage  # too few queries to set a threshold for the target: it answers each of them
    if trained_on:  # as the model card says it: no interval for new queries, which lie farther than these
        log.warning("the out-of-scope threshold, set for %.0f%% of in-scope queries, answers %.1f%% of the %d %s%s: new in-scope "
                    "queries lie farther from what the encoder learned, and fewer of them are answered; measure it on labelled "
                    "queries it never saw (bankintent evaluate RUN --data FILE), whose advice sets --oos-threshold",
                    100 * cfg.oos_coverage, 100 * kept["coverage"], len(labels), queries, ", too few to leave one out" if short else "")
        return metrics
    log.log(logging.WARNING if short else logging.INFO,
            "the out-of-scope threshold answers %.1f%% of the %d %s; of new in-scope queries like them, %.1f%% on average, "
            "between %.1f%% and %.1f%% (90%% interval)%s", 100 * kept["coverage"], len(labels), queries, 100 * expected,
            100 * low, 100 * high,
            f": short of the {cfg.oos_coverage:.0%} target, which needs {math.ceil(cfg.oos_coverage / (1 - cfg.oos_coverage) - 1e-9)} "
            f"queries or more" if short else "")
    return metrics


# an evaluation whose in-scope queries the fallback answers fewer of than this (of at least so many)
# is warned about: a threshold set on validation queries unlike the ones evaluated
LOW_COVERAGE, MIN_COVERAGE_QUERIES = 0.5, 20
# an evaluated split's coverage this unlikely (binomial test, one-sided) at the threshold's target is said
BELOW_TARGET_P = 0.05


def coverage_report(predictor: Predictor, correct: np.ndarray, logits: np.ndarray, features: np.ndarray,
                    out: Path, split: str, examples: OutOfScope | None = None) -> dict:
    """Accuracy against coverage on a split (whether each query was ``correct``, and the predictor's
    ``outputs`` for it) and the out-of-scope ``examples``' recall at the model's threshold; writes
    ``<split>_coverage.csv`` and ``<split>_coverage.png`` to ``out``, and each example's answer to
    ``<split>_out_of_scope.csv`` (which ones got through); returns a summary. ``examples`` None: the
    built-in probe set where the model's intents are Banking77's, else none."""
    _, scores = scores_of(predictor, logits, features)
    if examples is None:
        examples = built_in_examples(predictor.labels)
    oos_scores = _caught(predictor, examples, out, split)
    return write_coverage(correct, scores, oos_scores, predictor, Path(out), split, examples)


def _caught(predictor: Predictor, examples: OutOfScope, out: Path, split: str) -> dict[str, np.ndarray] | None:
    """Every score of the out-of-scope ``examples`` (None without any), and each example's answer in
    ``<split>_out_of_scope.csv`` (which ones got through) where the model has a fallback."""
    (Path(out) / f"{split}_out_of_scope.csv").unlink(missing_ok=True)  # an earlier evaluation's
    if not len(examples):
        return None
    probs, oos_scores = scores_of(predictor, *predictor.outputs(examples.texts))
    if predictor.oos_threshold is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        score = oos_scores[predictor.oos_score]
        write_sheet(pd.DataFrame({"file": [examples.files[i] for i in examples.origins], "line": pd.array(examples.lines, dtype="Int64"),
                                  "text": examples.texts, "caught": score > predictor.oos_threshold, "oos_score": score,
                                  "closest_intent": np.array(predictor.labels, dtype=object)[probs.argmax(-1)], "confidence": probs.max(-1)}),
                    Path(out) / f"{split}_out_of_scope.csv", float_format="%.6g")
    return oos_scores


def out_of_scope_report(predictor: Predictor, examples: OutOfScope, out: Path, split: str) -> dict:
    """The fallback on out-of-scope queries alone (a file of chatter, or of requests no intent covers,
    with no in-scope query to measure coverage on): the share it catches at its threshold; each
    query's answer in ``<split>_out_of_scope.csv``."""
    oos_scores = _caught(predictor, examples, out, split)
    name, threshold = predictor.oos_score, predictor.oos_threshold
    return {"split": split, "oos_examples": examples.describe(), "oos_examples_size": len(examples), "oos_score": name,
            "oos_score_reason": _reason(predictor), "threshold": threshold,
            "oos_recall": float((oos_scores[name] > threshold).mean()), **_recall_by_source(oos_scores[name] > threshold, examples)}


def _recall_by_source(caught: np.ndarray, examples: OutOfScope) -> dict:
    """The share caught of each kind of out-of-scope examples (chatter, and an intent the model never saw,
    say), where there are several: pooled, one hides the other."""
    if len(examples.sources) < 2:
        return {}
    origins = np.array(examples.origins)
    return {"oos_recall_by_source": {source: float(caught[origins == i].mean()) for i, source in enumerate(examples.sources)}}


def write_coverage(correct: np.ndarray, scores: dict[str, np.ndarray], oos_scores: dict[str, np.ndarray] | None,
                   predictor: Predictor, out: Path, split: str, examples: OutOfScope) -> dict:
    table = pd.DataFrame([{"score": name, **row} for name in scores
                          for row in ood.coverage_curve(scores[name], correct, oos_scores[name] if oos_scores else None)])
    out.mkdir(parents=True, exist_ok=True)
    table["threshold"] = table["threshold"].map(repr)  # whole: each is a query's score, and a rounded one answered a row less
    table.to_csv(out / f"{split}_coverage.csv", index=False, float_format="%.4f")
    summary = {"split": split, "oos_examples": examples.describe(), "oos_examples_size": len(examples),
               "auroc": {name: ood.auroc(scores[name], oos_scores[name]) for name in scores} if oos_scores else {}}
    point = None
    if predictor.oos_threshold is not None:
        name, threshold = predictor.oos_score, predictor.oos_threshold
        kept = scores[name] <= threshold
        summary.update({
            "oos_score": name,
            "oos_score_reason": _reason(predictor),
            "threshold": threshold,
            "coverage": float(kept.mean()),
            "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
            "oos_recall": float((oos_scores[name] > threshold).mean()) if oos_scores else None,
        })
        if oos_scores:
            summary.update(_recall_by_source(oos_scores[name] > threshold, examples))
        point = summary
        target = predictor.spec.oos_choice.get("coverage") if _trained(predictor) else None  # the caller's threshold has none
        summary["coverage_target"] = target
        aim = target or predictor.spec.oos_choice.get("coverage") or TrainConfig.oos_coverage
        at = ood.threshold_for_coverage(scores[name], aim)
        summary["for_target"] = {"aim": aim, "coverage": float((scores[name] <= at).mean()), "threshold": at,  # the share it answers:
                                 "other_score": name != predictor.spec.oos_score,  # the nearest above the aim that n queries allow
                                 "oos_recall": float((oos_scores[name] > at).mean()) if oos_scores else None}
        below = target is not None and binomtest(int(kept.sum()), len(kept), target, alternative="less").pvalue < BELOW_TARGET_P
        if split != "validation" and (below or len(kept) >= MIN_COVERAGE_QUERIES and kept.mean() < LOW_COVERAGE):
            aim = f"{target:.0%} of the held-out in-scope queries at training" if target is not None else "most validation queries"
            log.warning("the out-of-scope fallback answers only %.1f%% of these %d in-scope %s queries (its threshold was set to "
                        "answer %s): they score further out of scope than validation did, as where the validation queries copy "
                        "the training ones' wording or these are worded otherwise; give a validation file of real queries and "
                        "train again, or set a looser threshold (%s gives the one that answers each share of these queries: "
                        "--oos-threshold, oos_threshold= in Python)", 100 * kept.mean(), len(kept), split, aim,
                        out / f"{split}_coverage.csv")
    _plot_coverage(correct, scores, out / f"{split}_coverage.png", split, point, oos_scores)
    return summary


def _trained(predictor: Predictor) -> bool:
    """Whether the predictor answers with the out-of-scope score and threshold chosen at training."""
    spec = predictor.spec
    return predictor.oos_score == spec.oos_score and predictor.oos_threshold == spec.oos_thresholds.get(spec.oos_score)


def _reason(predictor: Predictor) -> str:
    """Why the predictor uses its out-of-scope score: the choice made at training, or the caller's."""
    spec = predictor.spec
    if predictor.oos_score != spec.oos_score:
        return "given (oos_score option)"
    if not _trained(predictor):
        return f"{spec.oos_choice.get('reason', 'chosen at training')}; threshold given (oos_threshold option)"
    return spec.oos_choice.get("reason", "chosen at training")


def _plot_coverage(correct: np.ndarray, scores: dict[str, np.ndarray], path: Path, split: str, point: dict | None,
                   oos_scores: dict[str, np.ndarray] | None = None) -> None:
    """One accuracy-against-coverage curve per score; the operating point (the chosen score at its
    threshold) marked, and why that score was chosen in the title. With out-of-scope examples, a second
    panel: the share of them caught against the share of in-scope queries answered, the trade-off a
    threshold sets."""
    fig, axes = plt.subplots(1, 2 if oos_scores else 1, figsize=(12.8 if oos_scores else 6.4, 4.4), squeeze=False)
    ax = axes[0, 0]
    if oos_scores:
        _plot_trade_off(axes[0, 1], scores, oos_scores, point)
    for name, values in scores.items():
        order = np.argsort(values, kind="stable")  # most confident first
        kept = np.arange(1, len(order) + 1)
        ax.plot(kept / len(order), np.cumsum(correct[order]) / kept, label=name)
    title = f"Accuracy against coverage ({split})"
    if point is not None:
        ax.plot([point["coverage"]], [point["accuracy_kept"]], marker="o", markersize=9, color="black", linestyle="none",
                label=f"operating point: {point['oos_score']} > {point['threshold']:.4g} is out of scope "
                      f"(answers {point['coverage']:.1%})")
        ax.axvline(point["coverage"], color="black", linewidth=0.8, linestyle=":")
        title += f"\n{point['oos_score']}: {point['oos_score_reason']}"
    low = min(0.5, point["coverage"] - 0.05) if point is not None else 0.5
    ax.set(xlabel="coverage (share of queries answered)", ylabel="accuracy on the queries answered", xlim=(low, 1.0))
    ax.set_title(title, fontsize=9 if point is not None else None, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(title="out-of-scope score", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_trade_off(ax, scores: dict[str, np.ndarray], oos_scores: dict[str, np.ndarray], point: dict | None) -> None:
    """Each score's out-of-scope examples caught against in-scope queries answered, over every threshold
    (each in-scope query's score)."""
    for name, values in scores.items():
        thresholds = np.sort(values)
        answered = np.arange(1, len(thresholds) + 1) / len(thresholds)
        caught = 1 - np.searchsorted(np.sort(oos_scores[name]), thresholds, side="right") / len(oos_scores[name])
        ax.plot(answered, caught, label=name)
    if point is not None and isinstance(point.get("oos_recall"), float):
        ax.plot([point["coverage"]], [point["oos_recall"]], marker="o", markersize=9, color="black", linestyle="none",
                label=f"operating point ({point['oos_score']})")
        ax.axvline(point["coverage"], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlabel="share of in-scope queries answered", ylabel="share of out-of-scope examples caught", xlim=(0.5, 1.0), ylim=(0, 1.02),
           title="What the threshold trades")
    ax.grid(alpha=0.3)
    ax.legend(title="out-of-scope score", fontsize=8)
