"""The technical report: ``bankintent report RUN_OR_SWEEP_DIRS... --output DIR`` writes ``report.md``
(figures in ``DIR/figures/``) and ``report.html``, the same document rendered with every figure
embedded, which opens with no server.

Sections: the data set, the result tables, learning curves, calibration and the out-of-scope
fallback, error analysis of the best run (by validation accuracy), what the adapter costs, and the
command of every run. Everything comes from the files the runs wrote (metrics.json, history.csv,
config.yaml, the model folder, a sweep's sweep.yaml, and what ``bankintent evaluate`` wrote:
``test_predictions.csv``, ``test_evaluation.json``, ``test_coverage.png``). Only where a run has no
predictions of the split newer than its model does the report predict it, once, and keep them.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from bankintent import ood  # noqa: E402
from bankintent.config import TrainConfig, check_output_folder, read_yaml  # noqa: E402
from bankintent.data import Examples, Splits, data_changes, data_record, run_splits, spreadsheet_text, write_sheet  # noqa: E402
from bankintent.errors import ConfigError  # noqa: E402
from bankintent.evaluation import accuracy_by_length, confused_pairs, per_intent, prediction_table, split_source  # noqa: E402
from bankintent.model_card import distill_command, thin_intents_note  # noqa: E402
from bankintent.modeling import MARKER  # noqa: E402
from bankintent.results import (  # noqa: E402
    RESULT_TABLES,
    aggregate_runs,
    float32_bytes,
    human_bytes,
    markdown_table,
    percent,
    results_row,
    results_tables,
    whole_epochs,
    whole_model,
)

log = logging.getLogger(__name__)

WORST = 15  # intents highlighted in the per-intent F1 figure
HEATMAP_INTENTS = 12  # intents in the confusion heat map


@dataclass
class Run:
    name: str
    folder: Path
    metrics: dict
    command: str
    candidate: bool = False  # a search trial its search did not choose: chosen among on validation, its test not shown

    @property
    def label(self) -> str:
        return f"{self.name} (seed {self.metrics.get('seed')})"


@dataclass
class Sweep:
    folder: Path
    results: pd.DataFrame
    planned: dict[str, int]


def _command(folder: Path, metrics: dict) -> str:
    """How the run was made: a sweep's or a search's recorded command, the ``distill`` command of a
    student (whose config.yaml holds its teacher's options), else training from the run's config.yaml,
    on as many processes as it trained on (config.yaml does not record them; metrics.json does)."""
    if (folder / "command.txt").is_file():
        return (folder / "command.txt").read_text(encoding="utf-8").strip()
    if metrics.get("method") == "distill":
        return distill_command(metrics, str(folder))
    processes = metrics.get("world_size") or 1
    nproc = ["--nproc", str(processes)] if processes > 1 else []
    return shlex.join(["bankintent", "train", "--config", str(folder / "config.yaml"), *nproc])


def collect(dirs: list[str | Path]) -> tuple[list[Run], list[Sweep]]:
    """The runs of every folder given: a training run (metrics.json), a sweep (sweep.yaml) or a search
    (search.json: its finished trials). A folder that is none of them (``runs/*`` takes in an export
    or a run stopped before it finished) is left out with a warning, unless it is all there is."""
    from bankintent.sweep import collect as sweep_results, read_sweep

    runs, sweeps, others, groups = [], [], [], []  # groups: what a run is one seed of (a run name of a sweep, a folder)
    for folder in map(Path, dirs):
        if not folder.is_dir():
            missing = "not a folder" if folder.exists() else "not found"
            raise ConfigError(f"{folder}: {missing}; give a training run's, a sweep's or a search's folder")
        if (folder / "sweep.yaml").is_file():
            _, planned_runs = read_sweep(folder / "sweep.yaml", files=False)
            results = sweep_results(folder, planned_runs)  # every finished run, also one finished since results.csv
            sweeps.append(Sweep(folder, results, {r.name: len(r.seeds) for r in planned_runs}))
            for row in results.itertuples():
                run_dir = folder / row.run_dir
                runs.append(Run(row.name, run_dir, json.loads((run_dir / "metrics.json").read_text()), row.command))
                groups.append(folder / row.name)
        elif (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            # a sweep's run folder (runs/NAME/seed-S) by its run's name, not "seed-S"
            name = folder.parent.name if re.fullmatch(r"seed-\d+", folder.name) and folder.parent.parent.name == "runs" else folder.name
            runs.append(Run(name, folder, metrics, _command(folder, metrics)))
            groups.append(folder.parent if name != folder.name else folder)
        elif (folder / "search.json").is_file():
            best = json.loads((folder / "search.json").read_text()).get("best_trial")
            trials = {int(match[1]): trial for trial in folder.glob("trial-*") if (match := re.fullmatch(r"trial-(\d+)", trial.name))}
            for number in sorted(trials):
                trial = trials[number]
                if (trial / "metrics.json").is_file():  # a trial stopped or pruned has none
                    metrics = json.loads((trial / "metrics.json").read_text())
                    runs.append(Run(f"{folder.name}/{trial.name}", trial, metrics, _command(trial, metrics), candidate=number != best))
                    groups.append(trial)
        else:
            others.append(f"{folder}: not a training run (no metrics.json), a sweep (no sweep.yaml) nor a search (no search.json)")
    if not runs:
        raise ConfigError(others[0] if len(dirs) == 1 and others else "no finished runs in " + ", ".join(map(str, dirs)))
    for other in others:
        log.warning("%s: left out of the report", other)
    named: dict[str, set[Path]] = {}
    for run, group in zip(runs, groups):
        named.setdefault(run.name, set()).add(group)
    for run, group in zip(runs, groups):  # runs of two folders named alike (A/run, B/run): told apart, not averaged as seeds
        if len(named[run.name]) > 1:
            relative = os.path.relpath(group)
            run.name = str(group) if relative.startswith("..") else relative
    return runs, sweeps


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


FIGURES = ("dataset.png", "learning_curves.png", "coverage.png", "confusion_heatmap.png", "per_intent_f1.png", "adapter_cost.png")


def _figure(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100, bbox_inches="tight")  # legends placed beside the axes included
    plt.close(fig)
    return f"![{name}](figures/{name})"


def _splits(run: Run) -> Splits:
    return run_splits(TrainConfig(**read_yaml(run.folder / "config.yaml")), notes=False)  # its training said the data's notes


# --- sections ---------------------------------------------------------------------------------------

def count_bins(counts: pd.Series) -> np.ndarray:
    """Bar edges for queries per intent: whole numbers of queries per bar, at most 20 bars, and one
    bar centred on the count where every intent has as many (a range of fractions otherwise)."""
    low, high = int(counts.min()), int(counts.max())
    width = max(1, -(-(high - low + 1) // 20))
    return np.arange(low, high + width + 1, width) - 0.5


def dataset_section(splits: Splits, figures: Path, analysed: Run, runs: list[Run]) -> str:
    parts = [(name, ex) for name, ex in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
             if ex is not None and len(ex)]  # small data has no validation split
    per_intent_counts = pd.Series(splits.train.labels).value_counts()
    rows = [{"Split": name, "Queries": f"{len(ex):,}", "Intents": len(set(ex.labels)),
             "Words per query (median, 95th pct)": f"{np.median(_words(ex)):.0f}, {np.percentile(_words(ex), 95):.0f}"}
            for name, ex in parts]
    fig, (count_ax, length_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    count_ax.hist(per_intent_counts.values, bins=count_bins(per_intent_counts), color="C0")
    count_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    count_ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of intents
    count_ax.set(xlabel="training queries per intent", ylabel="intents", title="Queries per intent (train)")
    bins = np.arange(0, max(max(_words(ex)) for _, ex in parts) + 2)
    for name, ex in parts:
        length_ax.hist(_words(ex), bins=bins, histtype="step", density=True, label=name, linewidth=1.5)
    length_ax.set(xlabel="words per query", ylabel="share of queries", title="Query length")
    length_ax.legend()
    others = sorted({str(r.metrics.get("data")) for r in runs if r.metrics.get("data") and r.metrics.get("data") != splits.source})
    elsewhere = (f" This is the data of run `{analysed.label}`, analysed below; other runs here trained on "
                 f"{', '.join(f'`{d}`' for d in others)}." if others else "")
    was = analysed.metrics.get("data_record")  # runs trained before it was recorded: not compared
    changed = was and data_changes(was, data_record(splits))
    if changed:  # rows added to the folder since, say, and a second run trained on them
        elsewhere += (f" The data has changed since run `{analysed.label}`, analysed below, trained on it ({changed}): the tables "
                      f"here are of the data as it is now.")
    return "\n\n".join(filter(None, [
        "## Data set",
        f"`{splits.source}`: {len(splits.labels)} intents. Validation split: {_validation_note(splits)}. "
        + ("The test file is only evaluated." if splits.test is not None and len(splits.test) else
           "No test file: a run's test scores below are of the file `bankintent evaluate RUN --data FILE` scored.") + elsewhere,
        markdown_table(rows, list(rows[0])),
        f"Training queries per intent: min {per_intent_counts.min()}, median {per_intent_counts.median():g}, "
        f"max {per_intent_counts.max()}" + (f" (fewest: {per_intent_counts.idxmin()}; most: {per_intent_counts.idxmax()})."
                                           if per_intent_counts.min() < per_intent_counts.max() else ": every intent alike."),
        thin_intents_note(analysed.metrics),
        f"Note: {analysed.metrics['val_warning']}." if analysed.metrics.get("val_warning") else None,
        _figure(fig, figures, "dataset.png"),
    ]))


def _validation_note(splits: Splits) -> str:
    how = splits.notes.get("validation", "")
    shots = splits.notes.get("shots")
    drawn = f"; the training split is a draw of {shots['per_intent']} example(s) per intent (seed {shots['seed']})" if shots else ""
    return (f"the file `{Path(how).name}`" if splits.notes.get("validation_from_file") else how) + drawn


def _words(examples: Examples) -> list[int]:
    return [len(t.split()) for t in examples.texts]


def results_section(runs: list[Run], sweeps: list[Sweep]) -> str:
    lines = ["## Results"]
    swept = set()
    for sweep in sweeps:
        lines.append(f"Sweep `{sweep.folder}`: mean ± standard deviation over seeds; Macro-F1 on test. "
                     "A `(single seed)` row ran once.")
        for key, table in results_tables(aggregate_runs(sweep.results), sweep.planned).items():
            lines += [f"### {RESULT_TABLES[key][0]}", table]
        swept |= {str(sweep.folder / p) for p in sweep.results.get("run_dir", [])}
    single = [r for r in runs if str(r.folder) not in swept]
    if single:
        measured = {r.name: measured_test(r) for r in single}
        hidden = {"test_accuracy": None, "test_macro_f1": None}
        rows = [{"Run": r.name, **results_row({**r.metrics, **measured[r.name], **(hidden if r.candidate else {})})} for r in single]
        lines += ["### Runs", markdown_table(rows, list(rows[0]))]
        if any(r.candidate for r in single):
            lines.append("A search's trials are chosen among on validation accuracy: only the trial it chose shows its test scores.")
        later = [f"`{name}` ({m['test_queries']:,} queries of `{Path(m['test_data']).name}`)" for name, m in measured.items() if m]
        if later:
            lines.append(f"Test accuracy and macro-F1 of {', '.join(later)}: measured after training by "
                         "`bankintent evaluate RUN --data FILE` (the data it trained on has no test file).")
        lines.append(_not_comparable(single, measured))
    return "\n\n".join(filter(None, lines))


def _not_comparable(runs: list[Run], measured: dict[str, dict]) -> str:
    """A warning where the runs of one table classify different intents or were tested on different
    queries: their scores sit side by side but do not compare (a model before and after new intents)."""
    def tested_on(run: Run, key: str, trained_key: str):  # what evaluate measured the run on, else what training did
        return measured[run.name].get(key) if measured.get(run.name) else run.metrics.get(trained_key)

    intents = {r.name: r.metrics.get("num_labels") for r in runs}
    digest = {r.name: tested_on(r, "test_sha256", "test_sha256") for r in runs}
    where = {r.name: tested_on(r, "test_data", "data") for r in runs}
    # the test queries themselves where every run recorded them (two folders may hold one test file); else where they were read
    tested = digest if all(digest.values()) else where
    differ = [what for what, values in (("intents", intents), ("test queries", tested)) if len(set(values.values())) > 1]
    if not differ:
        return ""
    counts = ", ".join(f"`{name}` {n}" for name, n in intents.items())
    return (f"**These runs differ in their {' and '.join(differ)}** (intents: {counts}): their scores do not compare; "
            f"evaluate each on one file of labelled queries of the intents they share (`bankintent evaluate RUN --data FILE "
            f"--output DIR`) to compare them.")


def written_for_this_model(run: Run, path: Path) -> bool:
    """Whether ``path`` (a file ``bankintent evaluate`` wrote into the run) exists and is newer than the
    run's model, not left from an earlier model in the same folder."""
    from bankintent.predict import model_folder

    marker = model_folder(run.folder) / MARKER
    return path.is_file() and not (marker.is_file() and path.stat().st_mtime_ns < marker.stat().st_mtime_ns)


def measured_test(run: Run) -> dict:
    """A run's test scores from what ``bankintent evaluate`` wrote (``test_evaluation.json``, newer than
    its model), where training measured none (small data without a test file); else empty."""
    path = run.folder / "test_evaluation.json"
    if run.metrics.get("test_accuracy") is not None or not written_for_this_model(run, path):
        return {}
    summary = json.loads(path.read_text())
    fallback = summary.get("out_of_scope") or {}
    own = fallback.get("oos_examples") != ood.PROBE_SET  # a file with no out-of-scope row is measured on the probe set
    return {"test_accuracy": summary.get("accuracy"), "test_macro_f1": summary.get("macro_f1"), "test_queries": summary.get("queries", 0),
            "test_data": summary.get("data", ""), "test_sha256": summary.get("data_sha256"),
            "test_oos_recall": fallback.get("oos_recall") if own else None, "test_answered": fallback.get("coverage")}


def curves_section(runs: list[Run], figures: Path) -> str:
    """One curve per run name: the mean over its seeds at each epoch (a seed stopped early by early
    stopping leaves the mean of the others), so that a sweep of many runs stays readable."""
    histories = [(r, pd.read_csv(r.folder / "history.csv")) for r in runs if (r.folder / "history.csv").is_file()]
    histories = [(r, h.assign(name=r.name)) for r, h in histories if not h.empty]
    if not histories:
        return ("## Learning curves\n\nNo run has curves: they are the classifier's epochs, which a linear probe does not "
                "train and the contrastive recipe trains none of (its encoder trains on pairs).")
    frame = pd.concat([h for _, h in histories])
    names = list(dict.fromkeys(frame.name))
    seeds = {name: sum(r.name == name for r, _ in histories) for name in names}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for index, name in enumerate(names):
        mean = frame[frame.name == name].groupby("epoch")[["train_loss", "val_loss", "val_accuracy"]].mean()
        label = name if seeds[name] == 1 else f"{name} (mean of {seeds[name]} seeds)"
        # each later run drawn thinner, dashed otherwise, with another marker: a run whose curves are another's (the
        # same recipe, say) shows on top of it, not instead of it
        style = dict(marker="os^Dv"[index % 5], markersize=7 - 1.5 * (index % 4), linewidth=2.5 - 0.5 * (index % 4),
                     linestyle=("-", "--", ":", "-.")[index % 4], color=colors(index % colors.N), label=label)
        for ax, column in zip(axes, mean.columns):
            ax.plot(mean.index, mean[column], **style)
    for ax, title in zip(axes, ("Training loss", "Validation loss", "Validation accuracy")):
        ax.set(xlabel="epoch", title=title)
        whole_epochs(ax)
        ax.grid(alpha=0.3)
    fig.legend(*axes[2].get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    no_curve = [r.label for r in runs if all(r is not h[0] for h in histories)]
    note = (f"No per-epoch curve for {', '.join(no_curve)}: a head fitted in one step (the linear probe's; `contrastive` "
            f"trains its encoder on pairs first, with no per-epoch record)." if no_curve else "")
    return "\n\n".join(filter(None, ["## Learning curves", "Per epoch, from each run's `history.csv`; a run of several "
                                     "seeds is drawn as their mean.", _figure(fig, figures, "learning_curves.png"), note]))


def saved_predictions(run: Run, examples: Examples | None, split: str) -> pd.DataFrame | None:
    """The predictions ``bankintent evaluate`` wrote (``<run>/<split>_predictions.csv``), if they are
    of these queries (``examples``; None: whichever) and newer than the model; else None."""
    path = run.folder / f"{split}_predictions.csv"
    if not written_for_this_model(run, path):
        return None
    saved = pd.read_csv(path, dtype={"text": str, "label": str, "predicted": str, "answer": str}, keep_default_na=False,
                        na_values={"oos_score": [""], "confidence": [""]})
    saved = saved.assign(**{column: saved[column].map(spreadsheet_text) for column in ("text", "label", "predicted", "answer") if column in saved})
    if "predicted" not in saved or examples is not None and saved.text.tolist() != examples.texts:
        return None
    return saved


def has_model_or_predictions(run: Run) -> bool:
    from bankintent.predict import model_folder

    return (model_folder(run.folder) / MARKER).is_file() or any(
        (run.folder / f"{split}_predictions.csv").is_file() for split in ("test", "validation"))


def predictions(run: Run, examples: Examples, split: str, out: Path) -> tuple[pd.DataFrame, Path]:
    """The saved model's predictions of ``examples`` and the file that holds them: those ``bankintent
    evaluate`` wrote, else predicted now (once) and kept in ``<run>/<split>_predictions.csv``, or in
    the report's folder ``out`` where that file holds evaluate's predictions of other queries."""
    path = run.folder / f"{split}_predictions.csv"
    saved = saved_predictions(run, examples, split)
    if saved is not None:
        return saved, path
    from bankintent.predict import Predictor

    predictor = Predictor.load(run.folder)
    frame = prediction_table(predictor, examples, *predictor.outputs(examples.texts, desc=f"report: predicting {split}"))
    if written_for_this_model(run, path):  # evaluate's, of other queries: it stays
        path = out / f"{split}_predictions.csv"
    write_sheet(frame, path, float_format="%.6g")
    return frame, path


def evaluated_split(run: Run, splits: Splits) -> tuple[str, Splits]:
    """The split the error analysis reads, and the splits with it: the test file, else the validation
    split, else (small data trains on every row) the queries ``bankintent evaluate RUN --data FILE``
    measured the model on, as the test split."""
    if splits.test is not None:
        return "test", splits
    if len(splits.validation):
        return "validation", splits
    measured = saved_predictions(run, None, "test")
    if measured is None:
        raise ConfigError(f"{run.folder}: no queries to analyse: small data trains on every row and {splits.source} has no test "
                          f"file; measure the model on labelled queries it has not seen with `bankintent evaluate {shlex.quote(str(run.folder))} "
                          "--data FILE`, then run report again")
    return "test", dataclasses.replace(splits, test=Examples(measured.text.tolist(), measured.label.tolist()))


def _number(value, digits: int = 4, style: str = "g") -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}{style}}"


def _temperature(m: dict, notes: list[str]) -> str:
    """A run's temperature, with the number of its note among ``notes`` (each note said once, below the
    table: runs on the same thin validation split share one)."""
    if m.get("temperature") is None:
        return "-"
    if m.get("temperature_note"):
        if m["temperature_note"] not in notes:
            notes.append(m["temperature_note"])
        return f"{m['temperature']:.3g} [{notes.index(m['temperature_note']) + 1}]"
    return f"{m['temperature']:.3g}"


def _kept(m: dict) -> str:
    """The share of the validation queries the threshold answers, and its target (runs before the share
    was recorded: the target alone)."""
    target = percent(m.get("oos_coverage_target"), 1)
    return f"{percent(m['oos_val_coverage'], 1)} ({target})" if m.get("oos_val_coverage") is not None else f"({target})"


def calibration_section(runs: list[Run], best: Run, split: str, frame: pd.DataFrame, figures: Path, source: str | None = None) -> str:
    """Temperature and ECE of every run; the out-of-scope score each chose and why, its threshold and
    what it catches; the best run's fallback on the evaluated split."""
    notes: list[str] = []
    calibration = [{"Run": r.label, "Temperature": _temperature(r.metrics, notes), "Fitted on": r.metrics.get("temperature_fitted_on") or "-",
                    "ECE before": _number(r.metrics.get("val_ece_before"), 3, "f"),
                    "ECE after": _number(r.metrics.get("val_ece_after"), 3, "f") + (" *" if r.metrics.get("ece_optimistic") else "")}
                   for r in runs]
    fallback = []
    for r in runs:
        measured = measured_test(r)  # evaluate --data's, where training had no test
        m = {**r.metrics, "test_oos_recall": measured["test_oos_recall"], "test_answered": measured["test_answered"]} if measured else r.metrics
        recall = m.get("oos_recall", m.get("oos_probe_recall"))
        fallback.append({
            "Run": r.label, "Score": m.get("oos_score") or "-", "Why this score": _cell(m.get("oos_score_reason") or "-"),
            "Threshold": _number(m.get("oos_threshold")), "Validation kept (target)": _kept(m) + (" *" if m.get("oos_coverage_optimistic") else ""),
            "Answered on test": percent(m.get("test_answered"), 1),
            **{f"AUROC {name}": _number(m.get(f"oos_auroc_{name}"), 3, "f") for name in reversed(ood.SCORES)},  # the newest score first
            "Out-of-scope examples": _cell(m.get("oos_examples") or "-"),
            "Caught": percent(recall, 1) + (" *" if m.get("oos_recall_optimistic") else ""),
            "Caught on test": percent(m.get("test_oos_recall"), 1),  # the test file's own out-of-scope rows, held out
        })
    parts = [
        "## Calibration and the out-of-scope fallback",
        "A confidence is the softmax of the logits divided by a temperature, fitted on the queries *Fitted on* names "
        "(the validation split; with small data, which has none, the training queries' out-of-fold probe logits or half "
        "of the training queries); the expected calibration error (ECE, 15 bins) on those queries measures how far "
        "confidences are from the accuracy they claim; marked * where the encoder trained on them, which makes it optimistic.",
        markdown_table(calibration, list(calibration[0])) + "".join(f"\n\n[{i}] {note}" for i, note in enumerate(notes, start=1)),
        "A query whose out-of-scope score is above the threshold is answered `out_of_scope` (the closest intent is "
        "still named). With out-of-scope examples, the score is the one that catches the most of them at its "
        "threshold, else the default one (*Why this score* says which); its "
        "threshold is set on the validation queries to answer the target share of new in-scope queries. *Validation kept*: "
        "the share of those queries it answers; marked * with small data, where they are training queries the encoder "
        "learned, so that new ones are answered less often. *Answered on test*: the share of the test file's in-scope "
        "queries answered with an intent. *Caught*: the share of the "
        "out-of-scope examples above the threshold; marked * where the same examples chose the score, which makes "
        "it optimistic (`bankintent evaluate RUN --data FILE` measures it on others). *Caught on test*: the share of the "
        "test file's own out-of-scope rows, where it has some.",
        markdown_table(fallback, list(fallback[0])),
    ]
    evaluation = run_evaluation(best, split, len(frame), source)
    if "out_of_scope" in frame and best.metrics.get("oos_threshold") is not None:
        answered = ~frame.out_of_scope.astype(bool)
        correct = frame.correct.astype(bool) if "correct" in frame else frame.predicted == frame.label
        line = (f"Run `{best.label}` on the {split} split ({len(frame):,} queries): the fallback answers "
                f"{answered.mean():.1%} of them with an intent, {correct[answered].mean() if answered.any() else float('nan'):.2%} "
                f"of those right (all queries answered: {correct.mean():.2%}).")
        fallback_of = (evaluation or {}).get("out_of_scope", {})
        if fallback_of.get("oos_recall") is not None:
            line += f" It catches {fallback_of['oos_recall']:.1%} of {fallback_of.get('oos_examples', 'the out-of-scope examples')}."
        parts.append(line)
    # the split's curve where evaluate drew it for these queries (training draws validation's)
    names = [split, "validation"] if evaluation is not None or split == "validation" else ["validation"]
    drawn = next((name for name in names if (best.folder / f"{name}_coverage.png").is_file()), None)
    if drawn is not None:
        shutil.copy(best.folder / f"{drawn}_coverage.png", figures / "coverage.png")
        if drawn != split:  # the line above is of the split analysed; the curve, of the queries training drew it on
            parts.append(f"The curve below is of the validation split, drawn by training (`bankintent evaluate {shlex.quote(str(best.folder))} "
                         f"--split {split}` draws the {split} split's).")
        parts.append("![coverage.png](figures/coverage.png)")
    return "\n\n".join(parts)


def run_evaluation(run: Run, split: str, queries: int, source: str | None) -> dict | None:
    """What ``bankintent evaluate`` wrote for ``split`` (``<split>_evaluation.json``), if for this model
    and of the ``queries`` the report analyses, read from ``source`` where the evaluation names its
    data; else None (an evaluation of another file must not be quoted as this split's)."""
    path = run.folder / f"{split}_evaluation.json"
    if not written_for_this_model(run, path):
        return None
    summary = json.loads(path.read_text())
    if summary.get("queries") != queries or source and summary.get("data") and summary["data"] != source:
        return None
    return summary


def analysed_run(runs: list[Run]) -> tuple[Run, str]:
    """The run whose errors the report analyses, and why that one: the best validation accuracy, where
    runs have one to compare (small data trains on every row and has none)."""
    validated = [r for r in runs if r.metrics.get("val_accuracy") is not None]
    if len(runs) == 1:
        return runs[0], "the only run whose model is here"
    if validated:
        best = max(r.metrics["val_accuracy"] for r in validated)
        tied = [r for r in validated if r.metrics["val_accuracy"] == best]
        if len(tied) > 1:  # runs of a data set grown over time tie at 100%: the last given, most often the newest
            others = ", ".join(f"`{r.label}`" for r in tied[:-1])
            return tied[-1], f"the best validation accuracy among the runs whose model is here, tied with {others}: the last given"
        return tied[0], "the best validation accuracy among the runs whose model is here"
    return runs[0], "the first run given: none has a validation split to compare them on"


def _changed_since(run: Run, split: str, queries: int) -> str:
    """A note where the split analysed is not the one training scored (its file changed since): the
    runs table's scores are training's, of the queries as they were then."""
    then = run.metrics.get({"test": "test_size", "validation": "val_size"}[split])
    if not then or then == queries:
        return ""
    return (f" The {split} file has changed since training ({then:,} queries then, {queries:,} now): the scores in the runs "
            f"table are training's, of the queries as they were; this analysis is of the file as it is now.")


def errors_section(run: Run, chosen: str, splits: Splits, split: str, frame: pd.DataFrame, kept: Path, figures: Path) -> str:
    index = {label: i for i, label in enumerate(splits.labels)}
    y_true, y_pred = frame.label.map(index).to_numpy(), frame.predicted.map(index).to_numpy()
    intents = per_intent(y_true, y_pred, splits.labels)
    absent = intents[intents.support == 0].intent.tolist()
    intents = intents[intents.support > 0]  # an intent with no query in the split has no F1 to rank
    pairs = confused_pairs(frame.text.tolist(), y_true, y_pred, splits.labels, top=10, examples=2)
    lengths = accuracy_by_length(frame.text.tolist(), y_true, y_pred)
    pair_rows = [{"Intents": f"{p['intent_a']} ↔ {p['intent_b']}", "Errors": p["count"],
                  "Example queries": _cell(" / ".join(p["examples"]))} for p in pairs]
    worst = intents.head(WORST)
    worst_rows = [{"Intent": r.intent, "F1": f"{r.f1:.3f}", "Precision": f"{r.precision:.3f}",
                   "Recall": f"{r.recall:.3f}", "Queries": int(r.support)} for r in worst.itertuples()]
    length_rows = [{"Length": r.length, "Queries": r.queries, "Accuracy": "-" if np.isnan(r.accuracy) else f"{r.accuracy:.2%}"}
                   for r in lengths.itertuples()]
    return "\n\n".join([
        "## Error analysis",
        f"Run `{run.label}` ({chosen}), on the {split} split "
        f"({len(frame):,} queries, accuracy {np.mean(y_true == y_pred):.2%}); predictions in `{kept}`." + _changed_since(run, split, len(frame)),
        "### Most confused intents",
        _heatmap(y_true, y_pred, splits.labels, figures),
        "### Most confused pairs",
        markdown_table(pair_rows, ["Intents", "Errors", "Example queries"]) if pair_rows else "No errors.",
        f"### Per-intent F1 (worst {WORST} highlighted)",
        _f1_figure(intents, figures),
        markdown_table(worst_rows, list(worst_rows[0])) + (f"\n\nNo {split} queries of {len(absent)} intent(s), left out: "
                                                           f"{', '.join(absent)}." if absent else ""),
        "### Accuracy by query length",
        markdown_table(length_rows, ["Length", "Queries", "Accuracy"]),
    ])


def _heatmap(y_true, y_pred, labels: list[str], figures: Path) -> str:
    matrix = confusion_matrix(y_true, y_pred, labels=range(len(labels)))
    errors = matrix - np.diag(np.diag(matrix))
    if not errors.any():
        return "No confusions: every query was answered with its own intent."
    involvement = errors.sum(0) + errors.sum(1)
    keep = sorted(i for i in np.argsort(-involvement, kind="stable")[:HEATMAP_INTENTS] if involvement[i] > 0)
    fig, ax = plt.subplots(figsize=(10, 10))
    ConfusionMatrixDisplay(matrix[np.ix_(keep, keep)], display_labels=[labels[i] for i in keep]).plot(
        ax=ax, cmap="Blues", xticks_rotation="vertical", colorbar=False)
    ax.set_title(f"Confusions among the {len(keep)} intents involved in most errors")
    return _figure(fig, figures, "confusion_heatmap.png")


def _f1_figure(intents: pd.DataFrame, figures: Path) -> str:
    return _figure(f1_figure(intents), figures, "per_intent_f1.png")


def f1_figure(intents: pd.DataFrame):
    """One horizontal bar per intent, worst at the top, its full name beside it and its F1 at its end;
    red, the worst ``WORST`` of those below a perfect F1."""
    ordered = intents.sort_values("f1", kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(ordered) + 1.2))
    colors = ["C3" if i < WORST and f1 < 1 else "C0" for i, f1 in enumerate(ordered.f1)]
    red = colors.count("C3")
    ax.barh(range(len(ordered)), ordered.f1, color=colors, height=0.7)
    ax.set_yticks(range(len(ordered)), ordered.intent, fontsize=8)
    ax.invert_yaxis()  # the worst first
    for i, f1 in enumerate(ordered.f1):
        ax.text(f1 + 0.005, i, f"{f1:.2f}", va="center", fontsize=7)
    worst = f"worst {red} in red" if red else "every one 1.00"
    ax.set(xlabel="F1", xlim=(0, 1.06), title=f"Per-intent F1 ({len(ordered)} intents), {worst}")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.01)
    return fig


def _share(saved: int, total_params: int) -> str:
    """A saved folder's share of the full model's float32 weights; one that holds every weight also holds
    the tokenizer and the run's small files, so it is a little over the weights, said in words."""
    return "all its weights, with the tokenizer" if whole_model(saved, total_params) else f"{100 * saved / float32_bytes(total_params):.2f}%"


def cost_section(runs: list[Run], figures: Path) -> str:
    first = {}
    for run in runs:
        first.setdefault(run.name, run.metrics)
    rows = []
    for name, m in first.items():
        full_bytes = float32_bytes(m["total_params"])  # the whole classifier's weights
        rows.append({"Run": name, "Trainable parameters": f"{m['trainable_params']:,}",
                     "Trainable %": f"{m['trainable_pct']:.3f}%", "Saved folder": human_bytes(m["adapter_bytes"]),
                     "Full model (float32)": human_bytes(full_bytes),
                     "Share of full model": _share(m["adapter_bytes"], m["total_params"])})
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(first) + 1.2))
    names = list(first)
    ax.barh(names, [float32_bytes(first[n]["total_params"]) for n in names], color="0.8", label="full model (float32)")
    ax.barh(names, [first[n]["adapter_bytes"] for n in names], color="C2", label="saved folder")
    ax.set(xscale="log", xlabel="bytes (log scale)", title="What each run ships on top of the base model")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    return "\n\n".join([
        "## What the adapter costs",
        "The saved folder is what a run ships on top of the public base model (LoRA adapter and head, or "
        "every trained tensor); the full model is the whole classifier's weights in float32.",
        markdown_table(rows, list(rows[0])),
        _figure(fig, figures, "adapter_cost.png"),
    ])


def commands_section(runs: list[Run], report_command: str) -> str:
    rows = [{"Run": r.name, "Seed": r.metrics.get("seed"), "Hardware": _hardware(r.metrics),
             "Training time": f"{r.metrics['train_seconds'] / 60:.1f} min", "Command": f"`{_cell(r.command)}`"}
            for r in runs]
    return "\n\n".join(["## How each run was made", f"This report: `{report_command}`. Each command names the "
                                                      "run's own folder, which holds the run now: give it another "
                                                      "`--output` to make the run again.",
                        markdown_table(rows, list(rows[0]))])


def _hardware(metrics: dict) -> str:
    processes = metrics.get("world_size") or 1
    return (metrics.get("hardware") or "-") + (f" × {processes} processes" if processes > 1 else "")


# --- the document -----------------------------------------------------------------------------------

def render_html(markdown: str, folder: Path, title: str) -> str:
    """The Markdown rendered to one HTML file, with the figures embedded as base64 PNG."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(match: re.Match) -> str:
        data = base64.b64encode((folder / match.group(1)).read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="(figures/[^"]+\.png)"', embed, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}code{font-size:.85em}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def write_report(dirs: list[str | Path], output: str | Path) -> list[Path]:
    """Write ``report.md`` (+ ``figures/``) and the self-contained ``report.html``, replacing an earlier
    report in ``output`` (made from the runs, it holds nothing else); returns both paths."""
    out = Path(output)
    check_output_folder(out)
    runs, sweeps = collect(dirs)
    figures = out / "figures"
    # the error analysis needs a model or its saved predictions; runs copied from another machine may
    # bring only their records (metrics.json, history.csv)
    analysable = [r for r in runs if has_model_or_predictions(r)]
    if not analysable:
        raise ConfigError(f"none of the {len(runs)} run(s) has its model folder or saved test predictions for the error "
                          f"analysis; add a run folder that has (for example runs/demo)")
    best, chosen = analysed_run(analysable)
    split, splits = evaluated_split(best, _splits(best))
    figures.mkdir(parents=True, exist_ok=True)
    frame, kept = predictions(best, splits.test if split == "test" else splits.validation, split, out)
    hardware = sorted({r.metrics.get("hardware", "-") for r in runs})
    bases = sorted({str(r.metrics.get("base_model", "-")) for r in runs})
    report_command = shlex.join(["bankintent", "report", *map(str, dirs), "--output", str(out)])
    title = "bankintent: technical report"
    markdown = "\n\n".join([
        f"# {title}",
        f"{len(runs)} run(s) from {', '.join(f'`{d}`' for d in dirs)}. Hardware: {'; '.join(hardware)}. "
        f"Base model: {'; '.join(f'`{base}`' for base in bases)}.",
        dataset_section(splits, figures, best, runs),
        results_section(runs, sweeps),
        curves_section(runs, figures),
        calibration_section(runs, best, split, frame, figures, split_source(splits, split)),
        errors_section(best, chosen, splits, split, frame, kept, figures),
        cost_section(runs, figures),
        commands_section(runs, report_command),
    ]) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(render_html(markdown, out, title), encoding="utf-8")
    for name in FIGURES:  # an earlier report's figures that this one has not (no learning curves, say); no other file
        if f"](figures/{name})" not in markdown:
            (figures / name).unlink(missing_ok=True)
    return [out / "report.html", out / "report.md"]
