"""The label audit: ``bankintent audit --data DIR`` lists what in a labelled data set deserves a
person's look before more training, and changes nothing.

Every finding comes from the frozen base model's mean-pooled embeddings, so the audit needs no
trained model and costs one pass of the encoder:

- **label issues**: out-of-fold probabilities of a linear probe (stratified k-fold cross-validation;
  its regularisation chosen by the same folds) given to cleanlab's ``find_label_issues``, ranked by
  self-confidence: the queries whose given label the other folds find least likely. A model never
  scores its own training queries here, so a wrong label cannot vouch for itself. A query is flagged
  by either of two of cleanlab's rules: confident learning (Northcutt et al., 2021: the query is
  confidently another intent, by per-intent thresholds) or low self-confidence (its given label is
  unlikely), or where its given label is less likely than chance and another intent comes first
  (small data's soft probabilities reach no threshold, and cleanlab's rules then flag nothing). Confident learning alone misses a query whose label is near-impossible but whose
  best alternative is not confident; and each intent's threshold is capped (``CONFIDENT_CAP``), else
  on small data a clear error whose alternative falls just below that intent's (high) threshold is
  missed by both rules. A label given to a single query cannot be cross-validated;
  where it is spelt nearly like another label (``config.closest_name``) it heads the list, with that
  label suggested.
- **conflicting near-duplicates**: pairs of queries whose embeddings' cosine similarity is at least
  ``duplicate_threshold`` and whose labels differ (exact duplicates included).
- **confusable intents**: the intent pairs the out-of-fold predictions mix up most (overlapping
  definitions rather than single bad labels).
- **thin intents**: intents with fewer examples than half the median intent, or than the few-shot
  floor ``MIN_EXAMPLES`` (``thin_floor``; in few-shot data, where the median intent is below that
  floor, only half the median counts: every intent is thin there, and the ones much thinner than
  the rest are what to look at).
- **length outliers**: queries of at most ``SHORT_WORDS`` words, and queries longer than
  ``max_length`` tokens, which training truncates.

Output: one CSV per finding, ``intents.csv`` (every intent: examples, out-of-fold recall, why it is
flagged), ``summary.md`` and ``summary.html`` with examples of each; ``audit.json`` with the counts.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from bankintent.config import DEFAULT_BASE_MODEL, TrainConfig, check_output_folder, closest_name
from bankintent.data import Examples, data_files, label_warnings, query_key, read_examples, set_apart, write_sheet
from bankintent.errors import ConfigError, DataError
from bankintent.evaluation import confused_pairs
from bankintent.probe import embed_texts, stratified_folds

log = logging.getLogger(__name__)

MIN_EXAMPLES = 8  # below this an intent is thin whatever the median (the few-shot recipes start near 5-10)
SHORT_WORDS = 2
# Confident learning counts a query as confidently intent j when j's probability reaches j's threshold,
# the mean probability the queries labelled j get for j. On small, clean data an intent's queries get
# 0.9 and more, so a clear error the other folds give 0.85 to that intent went uncounted. Capped here:
# 0.8 for another intent is confident whatever the intent's own mean.
CONFIDENT_CAP = 0.8


@dataclass
class Audited:
    """What the audit read: every labelled row of the training (and validation) file."""

    examples: Examples
    files: list[str]  # the file of each row


def read_labelled(data: str, text_column: str = "text", label_column: str = "category", oos_label: str | None = "out_of_scope") -> Audited:
    """The training file and, if the folder has one, the validation file, with the same readers and
    one-line errors as training; rows labelled ``oos_label`` are out-of-scope examples, not an intent,
    and are left out. The test file is not audited: it is what the model is judged on."""
    found = data_files(data)
    texts, labels, rows, files = [], [], [], []
    for path in (found.train, found.validation):
        if path is None:
            continue
        examples, _ = set_apart(read_examples(path, text_column, label_column), oos_label)
        texts += examples.texts
        labels += examples.labels
        rows += examples.rows or [None] * len(examples)
        files += [path.name] * len(examples)
    counted = found.train if found.validation is None else f"{found.train} and {found.validation.name}"  # the rows counted
    for warning in label_warnings(labels, oos_label):  # what training warns of the labels (case variants, typos), said alike
        log.warning("%s: %s", counted, warning)
    return Audited(Examples(texts, labels, rows), files)


def out_of_fold(x: np.ndarray, y: np.ndarray, cs: list[float], seed: int, progress: bool = True,
                groups: list[str] | None = None) -> tuple[np.ndarray, float]:
    """Out-of-fold class probabilities of a logistic regression, for the ``C`` of ``cs`` whose
    out-of-fold accuracy is best (the same folds choose it; no query is ever scored by a model that
    trained on it). Every intent needs 2 examples. Returns (probabilities, C)."""
    splits = stratified_folds(y, seed, groups)
    best = None
    with tqdm(total=len(cs) * len(splits), desc="cross-validation", unit="fit", disable=not progress) as bar:
        for c in cs:
            probabilities = np.zeros((len(y), int(y.max()) + 1))
            for fit_rows, held_rows in splits:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x[fit_rows], y[fit_rows])
                probabilities[np.ix_(held_rows, clf.classes_)] = clf.predict_proba(x[held_rows])
                bar.update()
            accuracy = float((probabilities.argmax(1) == y).mean())
            if best is None or accuracy > best[2]:
                best = (probabilities, float(c), accuracy)
    return best[0], best[1]


def near_duplicates(x: np.ndarray, threshold: float, block: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for every pair i < j of rows of the normalised ``x`` at least ``threshold``
    similar, computed a block of rows at a time (the full matrix of a large file does not fit)."""
    pairs = []
    for start in range(0, len(x), block):
        similarity = x[start : start + block] @ x.T
        rows, cols = np.nonzero(similarity >= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c:
                pairs.append((i, int(c), float(similarity[r, c])))
    return pairs


def _cell(text: str, width: int = 90) -> str:
    """A query as a Markdown table cell."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def likely_label_errors(y: np.ndarray, probabilities: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The queries cleanlab flags (either rule, each intent's threshold capped at ``CONFIDENT_CAP``), and
    with three intents or more those whose given label is less likely than chance (1 / intents) while
    another intent is the most likely, least likely label first; and every query's label quality (the given label's probability).
    The last rule is for small data, whose probe is regularised into soft probabilities: no intent
    reaches its threshold, so cleanlab counts no error at all, and a query labelled with an intent the
    other folds all but rule out went unflagged."""
    from cleanlab.count import compute_confident_joint, get_confident_thresholds
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(y, probabilities)  # self-confidence: the given label's probability
    thresholds = np.minimum(get_confident_thresholds(y, probabilities), CONFIDENT_CAP)
    joint = compute_confident_joint(y, probabilities, thresholds=thresholds)
    flagged = set()
    for rule in ("prune_by_noise_rate", "low_self_confidence"):
        flagged.update(find_label_issues(labels=y, pred_probs=probabilities, confident_joint=joint, filter_by=rule).nonzero()[0].tolist())
    if probabilities.shape[1] >= 3:  # of two intents, below chance is every mistake of the folds
        flagged.update(np.flatnonzero((quality < 1 / probabilities.shape[1]) & (probabilities.argmax(1) != y)).tolist())
    return sorted(flagged, key=lambda i: (quality[i], i)), quality


def thin_floor(counts: pd.Series) -> float:
    """Examples per intent below which an intent is flagged thin (see the module's docstring)."""
    median = float(counts.median())
    return 0.5 * median if median < MIN_EXAMPLES else max(MIN_EXAMPLES, 0.5 * median)


def audit(data: str, output: str | Path, base_model: str = DEFAULT_BASE_MODEL, text_column: str = "text",
          label_column: str = "category", oos_label: str | None = "out_of_scope", duplicate_threshold: float = 0.95,
          max_length: int = 64, seed: int = 42, progress: bool = True) -> dict:
    """Audit ``data`` (a folder or file, as ``train --data`` takes) into ``output``; returns the counts
    (``audit.json``)."""
    if not 0 < duplicate_threshold <= 1:
        raise ConfigError(f"--duplicate-threshold is a cosine similarity, above 0 and at most 1; got {duplicate_threshold}")
    check_output_folder(output)
    read = read_labelled(data, text_column, label_column, oos_label)
    examples = read.examples
    labels = sorted(set(examples.labels))
    if len(labels) < 2:
        raise DataError(f"{data}: the audit needs at least 2 intents, found {len(labels)}")
    counts = pd.Series(examples.labels).value_counts()
    x_all = embed_texts(examples.texts, base_model, max_length, progress=progress)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    def where(i: int) -> dict:
        return {"file": read.files[i], "line": examples.rows[i], "text": examples.texts[i], "label": examples.labels[i]}

    # label issues: intents with a single example cannot be cross-validated and are only reported thin
    kept = np.flatnonzero(counts[examples.labels].to_numpy() >= 2)
    cv_labels = sorted({examples.labels[i] for i in kept})
    cv_index = {name: i for i, name in enumerate(cv_labels)}
    y = np.array([cv_index[examples.labels[i]] for i in kept])
    copies = [query_key(examples.texts[i]) for i in kept]  # a repeated query in one fold: never scored by a probe fitted on it
    probabilities, c = out_of_fold(x_all[kept], y, TrainConfig().probe_c, seed, progress, copies)
    ranked, quality = likely_label_errors(y, probabilities)
    predicted = probabilities.argmax(1)
    # a label given once, spelt nearly like another label, is most likely that label mistyped: first in the list
    typos = [{**where(i), "suggested_label": close} for i, label in enumerate(examples.labels)
             if counts[label] == 1 and (close := closest_name(label, cv_labels))]
    issues = pd.DataFrame([{"rank": rank, **row} for rank, row in enumerate(typos + [{
        **where(int(kept[i])), "suggested_label": cv_labels[predicted[i]],
        "given_probability": round(float(probabilities[i, y[i]]), 4),
        "suggested_probability": round(float(probabilities[i, predicted[i]]), 4),
        "label_quality": round(float(quality[i]), 4),
    } for i in ranked], start=1)], columns=["rank", "file", "line", "text", "label", "suggested_label",
                                            "given_probability", "suggested_probability", "label_quality"])
    write_sheet(issues, out / "label_issues.csv")

    duplicates = pd.DataFrame([{
        "similarity": round(s, 4), **{f"{k}_a": v for k, v in where(i).items()}, **{f"{k}_b": v for k, v in where(j).items()},
    } for i, j, s in near_duplicates(x_all, duplicate_threshold) if examples.labels[i] != examples.labels[j]],
        columns=[f"{k}_{s}" for s in "ab" for k in ("file", "line", "text", "label")] + ["similarity"])
    duplicates = duplicates.sort_values("similarity", ascending=False, kind="stable")
    write_sheet(duplicates, out / "conflicting_duplicates.csv")

    texts = [examples.texts[i] for i in kept]
    pairs = confused_pairs(texts, y, predicted, cv_labels, top=20, examples=3)
    pair_rows = pd.DataFrame([{**p, "examples": " | ".join(p.get("examples") or [])} for p in pairs])
    write_sheet(pair_rows, out / "confused_pairs.csv")

    recall = pd.Series(predicted == y).groupby(pd.Series([cv_labels[k] for k in y])).mean()
    floor = thin_floor(counts)
    intents = pd.DataFrame({"intent": counts.index, "examples": counts.to_numpy()})
    intents["out_of_fold_recall"] = intents["intent"].map(recall).round(4)
    intents["flag"] = np.where(intents["examples"] < floor, f"thin (< {floor:g} examples)", "")
    intents = intents.sort_values(["examples", "intent"], kind="stable")
    write_sheet(intents, out / "intents.csv")

    from bankintent.modeling import load_tokenizer

    tokens = [len(ids) for ids in load_tokenizer(base_model)(examples.texts, add_special_tokens=True)["input_ids"]]
    lengths = pd.DataFrame([{**where(i), "words": len(t.split()), "tokens": tokens[i],
                             "issue": "short" if len(t.split()) <= SHORT_WORDS else "truncated"}
                            for i, t in enumerate(examples.texts) if len(t.split()) <= SHORT_WORDS or tokens[i] > max_length])
    write_sheet(lengths, out / "length_outliers.csv")

    summary = {
        "data": str(data), "files": sorted(set(read.files)), "queries": len(examples), "intents": len(labels),
        "base_model": base_model, "probe_c": c, "out_of_fold_accuracy": round(float((predicted == y).mean()), 4),
        "label_issues": len(issues), "conflicting_duplicates": len(duplicates), "duplicate_threshold": duplicate_threshold,
        "confused_pairs": len(pairs), "most_confused": [pairs[0]["intent_a"], pairs[0]["intent_b"], pairs[0]["count"]] if pairs else None,
        "thin_intents": int((intents["flag"] != "").sum()),
        "short_queries": int((lengths.get("issue", pd.Series(dtype=str)) == "short").sum()),
        "truncated_queries": int((lengths.get("issue", pd.Series(dtype=str)) == "truncated").sum()),
    }
    from bankintent.results import write_json

    write_json(out / "audit.json", summary)
    markdown = summary_markdown(summary, issues, duplicates, pairs, intents, lengths)
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    from bankintent.report import render_html

    (out / "summary.html").write_text(render_html(markdown, out, f"Audit of {data}"), encoding="utf-8")
    return summary


def summary_markdown(summary: dict, issues: pd.DataFrame, duplicates: pd.DataFrame, pairs: list[dict],
                     intents: pd.DataFrame, lengths: pd.DataFrame, shown: int = 15) -> str:
    from bankintent.results import markdown_table

    def table(frame: pd.DataFrame, columns: list[str]) -> str:
        if frame.empty:
            return "None found."
        rows = [{c: "-" if pd.isna(v) else _cell(str(v)) for c, v in row.items()} for row in frame[columns].head(shown).to_dict("records")]
        more = f"\n\n{len(frame) - shown} more in the CSV." if len(frame) > shown else ""
        return markdown_table(rows, columns) + more

    pair_frame = pd.DataFrame([{"intents": f"{p['intent_a']} / {p['intent_b']}", "errors": p["count"],
                                "example": (p.get("examples") or [""])[0]} for p in pairs])
    return "\n\n".join([
        f"# Audit of `{summary['data']}`",
        f"{summary['queries']:,} labelled queries of {summary['intents']} intents ({', '.join(summary['files'])}). "
        f"Embeddings: the frozen `{summary['base_model']}`; a linear probe (C = {summary['probe_c']:g}) scores every query "
        f"from the other folds: out-of-fold accuracy {summary['out_of_fold_accuracy']:.2%}. Nothing in the data was changed.",
        f"## Likely label errors: {summary['label_issues']}",
        "Any label given once and spelt nearly like another comes first (a likely typo; no probability, as a single "
        "query cannot be cross-validated); the rest are ranked by how unlikely the other folds find the given label "
        "(cleanlab, self-confidence). Each is a candidate for a person's look, not a verdict: `label_issues.csv`.",
        table(issues, ["rank", "line", "text", "label", "suggested_label", "given_probability"]),
        f"## Near-duplicates with different labels: {summary['conflicting_duplicates']}",
        f"Cosine similarity ≥ {summary['duplicate_threshold']}: `conflicting_duplicates.csv`.",
        table(duplicates, ["similarity", "text_a", "label_a", "text_b", "label_b"]),
        "## Intents the model cannot tell apart",
        "Out-of-fold confusions of each pair, both directions: `confused_pairs.csv`.",
        table(pair_frame, ["intents", "errors", "example"]),
        f"## Thin intents: {summary['thin_intents']}",
        "Every intent with its examples and out-of-fold recall: `intents.csv`.",
        table(intents[intents["flag"] != ""], ["intent", "examples", "out_of_fold_recall", "flag"]),
        f"## Very short and truncated queries: {summary['short_queries']} short, {summary['truncated_queries']} truncated",
        f"At most {SHORT_WORDS} words, or longer than the model's token limit: `length_outliers.csv`.",
        table(lengths, ["line", "text", "label", "words", "tokens", "issue"]) if not lengths.empty else "None found.",
    ]) + "\n"
