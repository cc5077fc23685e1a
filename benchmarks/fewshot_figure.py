"""Few-shot Banking77: test accuracy against training examples per intent, with published results.

    python benchmarks/fewshot_figure.py runs/sweep_fewshot/results.csv docs/results/reference/results.csv \
        --output docs/results/fewshot/accuracy_vs_shots.png

The first file is the few-shot sweep's (``bankintent sweep --config configs/sweep_fewshot.yaml``),
the second the full-data sweep's (``configs/sweep_reference.yaml``); each method is a line through
the mean over its draws (the bars: one standard deviation), the full training set drawn at its mean
examples per intent. ``--line LABEL RUN...`` draws other runs (their ``metrics.json``: ``shots`` and
``test_accuracy``) as one more line, for example the default command's runs with the intent names.
The published few-shot results are drawn as reference points: they are other papers' numbers on the
same 3,080 test queries, with other (mostly larger) models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# Published Banking77 test accuracy, (examples per intent, accuracy %), as cited in issue 15.
PUBLISHED = {
    "CPFT (Zhang et al., 2021)": [(5, 80.86), (10, 87.20)],
    "DNNC (Zhang et al., 2020)": [(5, 80.40), (10, 86.71)],
    "ICDA (Lin et al., 2023)": [(5, 84.01), (10, 89.79)],
    "USE+ConveRT (Casanueva et al., 2020)": [(10, 85.19)],
}
INTENTS = 77
FULL_TRAIN = 9002  # the project's training split, for sweeps whose results.csv has no train_size


def points(frame: pd.DataFrame, full: bool) -> pd.DataFrame:
    """Mean and standard deviation of test accuracy (%) per method and examples per intent."""
    frame = frame.copy()
    if full:
        size = frame["train_size"] if "train_size" in frame else pd.Series(FULL_TRAIN, index=frame.index)
        frame["per_intent"] = size.fillna(FULL_TRAIN) / INTENTS
    else:
        frame["per_intent"] = frame["shots"]
    frame["accuracy"] = 100 * frame["test_accuracy"]
    return frame.groupby(["method", "per_intent"], as_index=False)["accuracy"].agg(["mean", "std", "count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fewshot", help="the few-shot sweep's results.csv")
    parser.add_argument("full", help="the full-data sweep's results.csv (its linear-probe and lpft rows are drawn)")
    parser.add_argument("--output", required=True, help="the figure (.png)")
    parser.add_argument("--line", nargs="+", action="append", default=[], metavar="LABEL RUN",
                        help="a label, then run folders drawn as one more line (repeatable)")
    args = parser.parse_args()
    extra = [{"method": label, "shots": m["shots"]["per_intent"], "test_accuracy": m["test_accuracy"]}
             for label, *runs in args.line for m in (json.loads((Path(run) / "metrics.json").read_text()) for run in runs)]
    few = points(pd.concat([pd.read_csv(args.fewshot), pd.DataFrame(extra)]), full=False)
    full_frame = pd.read_csv(args.full)
    full_frame = full_frame[full_frame["name"].isin(few["method"].unique()) & full_frame["method"].isin(few["method"].unique())]
    both = pd.concat([few, points(full_frame, full=True)]).sort_values(["method", "per_intent"])
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for method, group in both.groupby("method"):
        ax.errorbar(group["per_intent"], group["mean"], yerr=group["std"].fillna(0), marker="o", capsize=3,
                    label=f"{method} (this project, mean of {int(group['count'].max())} runs)")
    for (name, values), marker in zip(PUBLISHED.items(), "s^vD"):
        ax.scatter(*zip(*values), marker=marker, facecolors="none", edgecolors="black", s=60, label=f"{name}, published")
    ax.set_xscale("log")
    ticks = sorted(set(both["per_intent"].round(0)))
    ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks])
    ax.set(xlabel="training examples per intent (log scale; the last point: the full training set)",
           ylabel="test accuracy (%), 3,080 queries", title="Banking77 with few examples per intent")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(both.to_string(index=False))


if __name__ == "__main__":
    main()
