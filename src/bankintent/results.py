"""Results of runs: per-epoch history (CSV + learning-curve PNG) and the results tables (one run, sweeps).

The HTML/Markdown report that gathers them is ``bankintent.report``."""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from bankintent.config import TrainConfig  # noqa: E402

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy"]
TABLE_COLUMNS = ["Method", "Val Acc", "Test Acc", "Macro-F1", "Trainable %", "Adapter size", "Training time"]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's too) replaced by None, recursively: JSON has
    no NaN, and Python's ``json`` writes one that other readers refuse (``JSON.parse``, ``jq``)."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: Path, value: Any, indent: int = 2) -> None:
    """``value`` as strict JSON (``finite``) in ``path``: the files a run writes for other programs to read."""
    Path(path).write_text(json.dumps(finite(value), indent=indent, allow_nan=False))


def whole_epochs(ax) -> None:
    """Ticks of an epoch axis at whole epochs only (never 1.5), at most about ten of them."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))


def write_history(history: list[dict], out: Path) -> None:
    """``history.csv`` and ``learning_curves.png`` (loss and validation accuracy against epoch)."""
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    frame.to_csv(out / "history.csv", index=False, float_format="%.5f")
    if frame.empty:
        return
    fig = learning_curves_figure(frame)
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)


ACCURACY_SPAN = 0.05  # the least span of the learning curves' accuracy axis


def learning_curves_figure(frame: pd.DataFrame):
    """Loss (train and validation) and validation accuracy against the epoch."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(frame.epoch, frame.train_loss, "o-", label="train")
    loss_ax.plot(frame.epoch, frame.val_loss, "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.legend()
    acc_ax.plot(frame.epoch, frame.val_accuracy, "o-", color="C1", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if frame.val_accuracy.isna().all():  # small data: no validation split
        acc_ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=acc_ax.transAxes, color="0.4")
    else:  # at least ACCURACY_SPAN tall: epochs a query or two apart do not fill the axis as if they were far apart
        low, high = frame.val_accuracy.min(), frame.val_accuracy.max()
        pad = max(ACCURACY_SPAN - (high - low), 0) / 2 + 0.005
        bottom, top = low - pad, high + pad
        shift = max(0.0, -bottom) - max(0.0, top - 1.005)  # a window past 0 or 100% moved inside, not cut
        acc_ax.set_ylim(bottom + shift, top + shift)
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        whole_epochs(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def float32_bytes(total_params: float) -> float:
    """The size of a model's weights in float32, the dtype runs train and save in."""
    return 4 * total_params


def whole_model(saved_bytes: float, total_params: float) -> bool:
    """Whether a run's saved folder holds every weight (full fine-tuning, the contrastive encoder): it is
    then at least the float32 weights' size, where an adapter is a small share of them."""
    return saved_bytes >= float32_bytes(total_params)


def saved_size(saved_bytes: float, total_params: float | None) -> str:
    """The "Adapter size" a table shows: the saved folder's size, marked where it is the whole model,
    which a reader comparing adapters would otherwise take for one."""
    size = human_bytes(saved_bytes)
    return f"{size} (whole model)" if isinstance(total_params, Real) and whole_model(saved_bytes, total_params) else size


def percent(value, digits: int = 2, missing: str = "-") -> str:
    """``value`` (a share) as a percentage; ``missing`` where there is none (None, NaN: no queries)."""
    return f"{value:.{digits}%}" if isinstance(value, Real) and not math.isnan(value) else missing


def percent_in_words(value, digits: int = 2) -> str:
    """``percent`` for a printed sentence, where a missing value reads "n/a" rather than a table's "-"."""
    return percent(value, digits, missing="n/a")


def fallback_on_test(metrics: dict) -> str | None:
    """Training's last word on the out-of-scope fallback on the test file (None without one): what the
    service gives its in-scope queries, since the table's accuracy takes the most probable intent of
    a query the fallback turns away too, and what it catches of its out-of-scope rows."""
    said = []
    if metrics.get("test_answered") is not None:
        said.append(f"answers {percent(metrics['test_answered'], 1)} of the test file's in-scope queries with an intent, "
                    f"{percent(metrics['test_answered_right'], 1)} with the right one")
    if metrics.get("test_oos_recall") is not None:
        said.append(f"catches {percent(metrics['test_oos_recall'], 1)} of {metrics['test_oos_examples']}")
    return f"out-of-scope: the fallback {' and '.join(said)}" if said else None


def results_row(metrics: dict) -> dict[str, str]:
    return {
        "Method": metrics["method"],
        "Val Acc": percent(metrics.get("val_accuracy")),
        "Test Acc": percent(metrics.get("test_accuracy")),
        "Macro-F1": percent(metrics.get("test_macro_f1")),
        "Trainable %": f"{metrics['trainable_pct']:.3f}%",
        "Adapter size": saved_size(metrics["adapter_bytes"], metrics.get("total_params")),
        "Training time": f"{metrics['train_seconds'] / 60:.1f} min",
    }


def markdown_table(rows: list[dict[str, str]], columns: list[str] = TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --- sweeps: results.csv (one row per run and seed) -> tables of mean ± std over seeds -------------

SCORES = {"val": "val_accuracy", "test": "test_accuracy", "f1": "test_macro_f1"}


def mean_std(values: pd.Series) -> str:
    """``93.38 ± 0.21%`` over seeds; one seed reads ``93.38%``."""
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{100 * values.iloc[0]:.2f}%"
    return f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}%"


def _delta(results: pd.DataFrame, name: str, baseline: str, column: str) -> str:
    """Mean difference to the baseline run over the seeds both have (points of accuracy)."""
    own = results[results.name == name].set_index("seed")[column]
    base = results[results.name == baseline].set_index("seed")[column]
    shared = own.index.intersection(base.index)
    if shared.empty:
        return "-"
    return f"{100 * (own[shared] - base[shared]).mean():+.2f} pts"


def _kept_epoch(group: pd.DataFrame) -> str:
    """The epoch whose weights a run kept (mean over seeds), or ``mean of N`` where it kept the mean
    of its N epochs' weights (``average_weights``, lpft's recipe), whatever its best single epoch was."""
    averaged = int(group["averaged_epochs"].fillna(0).max()) if "averaged_epochs" in group else 0
    if averaged:
        return f"mean of {averaged}"
    return f"{round(group.best_epoch.mean(), 1):g}" if "best_epoch" in group else "-"


def _setting(value, spec: str) -> str:
    """A training setting of ``results.csv`` as a table shows it; ``-`` where the method has none."""
    return format(int(value) if spec == "d" else value, spec) if isinstance(value, Real) and not math.isnan(value) else "-"


def aggregate_runs(results: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per sweep run (in sweep order): formatted mean ± std of the scores over its seeds, the
    cost columns (mean over seeds) and, for improvement rows, the difference to their baseline."""
    rows = []
    if results.empty:
        return rows
    for name, group in results.groupby("name", sort=False):
        first = group.iloc[0]
        row = {
            "name": name, "tables": str(first["tables"]).split(","), "method": first["method"], "seeds": len(group),
            "Val Acc": mean_std(group.val_accuracy), "Test Acc": mean_std(group.test_accuracy), "val_mean": group.val_accuracy.mean(),
            "Macro-F1": mean_std(group.test_macro_f1), "Trainable %": f"{group.trainable_pct.mean():.3f}%",
            "Adapter size": saved_size(group.adapter_bytes.mean(), group.total_params.mean() if "total_params" in group else None),
            "Training time": f"{group.train_seconds.mean() / 60:.1f} min",
            "LR": _setting(first.get("lr"), "g"), "r": _setting(first.get("lora_r"), "d"),
            "alpha": _setting(first.get("lora_alpha"), "d"), "Epochs": _setting(first.get("epochs"), "d"),
            "Best epoch": _kept_epoch(group),
            "Pooling": first.get("pooling") if isinstance(first.get("pooling"), str) else "-",
            "hardware": "; ".join(sorted(set(group.hardware.dropna()))),
            "note": first.get("note", "") if isinstance(first.get("note", ""), str) else "",
            "options": json.loads(first["options"]) if isinstance(first.get("options"), str) else {},
        }
        baseline = first.get("baseline")
        if isinstance(baseline, str) and baseline:
            row.update({"Baseline": baseline, "Δ Val": _delta(results, name, baseline, "val_accuracy"),
                        "Δ Test": _delta(results, name, baseline, "test_accuracy")})
        rows.append(row)
    return rows


RESULT_TABLES = {
    "methods": ("Method comparison", ["Method", "Pooling", "Seeds", *TABLE_COLUMNS[1:]]),
    "hyperparameters": ("LoRA hyperparameters", ["Method", "LR", "r", "alpha", "Seeds", "Val Acc", "Test Acc"]),
    # a grid's rows are chosen among by validation accuracy alone, so its table shows no test score
    "grid": ("Grid (validation only; each method's best row marked)",
             ["Method", "Pooling", "LR", "Epochs", "Best epoch", "Seeds", "Val Acc", "Best on validation"]),
    "improvements": ("Suggested improvements", ["Method", "Baseline", "Seeds", "Val Acc", "Test Acc", "Δ Val", "Δ Test"]),
}


def grid_choice(rows: list[dict[str, Any]]) -> dict[str, str]:
    """What the grid chooses: each method's grid row (by name) of the highest mean validation accuracy."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "grid" in row["tables"] and row["val_mean"] == row["val_mean"] and (
                row["method"] not in best or row["val_mean"] > best[row["method"]]["val_mean"]):
            best[row["method"]] = row
    return {method: row["name"] for method, row in best.items()}


def _grid_options(rows: list[dict[str, Any]], columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A grid's rows with a column for each option their sweep entries set to different values (a
    grid over ``probe_c`` or ``lora_r`` shows them), beside the columns every grid has."""
    shown = {"method", "lr", "epochs", "pooling"}
    keys = sorted({key for row in rows for key in row["options"]} - shown)
    default = TrainConfig()
    value = lambda row, key: row["options"].get(key, getattr(default, key, None))  # noqa: E731
    varying = [key for key in keys if len({json.dumps(value(row, key), default=str) for row in rows}) > 1]
    chosen = set(grid_choice(rows).values())
    rows = [{**row, **{key: str(value(row, key)) for key in varying},
             "Best on validation": "yes" if row["name"] in chosen else ""} for row in rows]
    at = columns.index("Seeds")
    return rows, [*columns[:at], *varying, *columns[at:]]


def results_tables(rows: list[dict[str, Any]], planned: dict[str, int] | None = None) -> dict[str, str]:
    """Markdown of each results table that has rows. ``Seeds`` reads ``3`` or ``1 of 3`` while a run
    is unfinished; a method with one seed is marked ``1 (single seed)``. The method table holds the
    rows named for it and the row each grid chose on validation, never a grid row it did not choose."""
    tables = {}
    chosen = set(grid_choice(rows).values())
    passed_over = [row["name"] for row in rows if {"grid", "methods"} <= set(row["tables"]) and row["name"] not in chosen]
    for key, (_, columns) in RESULT_TABLES.items():
        selected = []
        for row in rows:
            in_table = (row["name"] in chosen or "grid" not in row["tables"] and key in row["tables"]) if key == "methods" \
                else key in row["tables"]
            if not in_table:
                continue
            wanted = (planned or {}).get(row["name"], row["seeds"])
            seeds = f"{row['seeds']} of {wanted}" if row["seeds"] < wanted else str(row["seeds"])
            selected.append({**row, "Method": row["name"], "Seeds": seeds + (" (single seed)" if wanted == 1 else "")})
        if selected and key == "grid":
            selected, columns = _grid_options(selected, columns)
        if selected:
            tables[key] = markdown_table(selected, columns)
    if passed_over and "methods" in tables:
        tables["methods"] += (f"\n\nNot listed though the sweep file names them for this table: {', '.join(passed_over)}; their "
                              f"grid chose another row on validation (marked in the grid table).")
    return tables


def write_results_tables(rows: list[dict[str, Any]], path: Path, command: str, planned: dict[str, int]) -> None:
    """``results.md``: every table, the hardware and the command that produced them."""
    lines = ["# Sweep results", "", f"Produced by `{command}`; each run's own command is in `results.csv`.",
             "Scores are mean ± standard deviation over seeds (sample std); Macro-F1 is on test.", ""]
    for key, table in results_tables(rows, planned).items():
        lines += [f"## {RESULT_TABLES[key][0]}", "", table, ""]
    hardware = sorted({h for row in rows for h in row["hardware"].split("; ") if h})
    lines += ["Hardware: " + ("; ".join(hardware) or "-"), ""]
    missing = [f"{name} ({n - next((r['seeds'] for r in rows if r['name'] == name), 0)} of {n} seeds)"
               for name, n in planned.items() if next((r["seeds"] for r in rows if r["name"] == name), 0) < n]
    if missing:
        lines += ["Not finished yet (start the same command again to continue): " + ", ".join(missing), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
