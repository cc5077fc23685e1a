"""Active learning on Banking77, simulated: does ``bankintent select`` beat random labelling?

    python benchmarks/active_learning.py --output docs/results/active_learning [--seeds 42 43 44] [--workdir DIR]

Each seed starts from 10 labelled queries per intent, drawn from the project's 9,002-query training
split; the rest of that split is the unlabelled pool. Each round a strategy picks 500 pool queries,
their true labels are revealed, and the classifier is retrained; 5 rounds. Strategies: ``select``
(``bankintent.selection.rank``: cluster-margin, the command's own function, ``--candidates`` per
pick) and ``random``. The classifier retrained each round is the linear probe (a logistic regression
on the frozen base model's embeddings, C chosen on the 1,001 validation queries), so that 3 seeds x 2
strategies x 6 fits run in minutes on a CPU; ``select`` ranks with that probe's probabilities and
embeddings exactly as it ranks with a trained run's. Test accuracy (the official 3,080) is reported
after every round and chooses nothing.

Writes ``results.csv`` (a row per seed, strategy and round), ``results.md`` (mean ± std over seeds,
and how many labels ``select`` needs to reach random's final accuracy) and ``accuracy_vs_labels.png``.
The embeddings are kept in ``--workdir`` (``embeddings.npz``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bankintent import probe  # noqa: E402
from bankintent.probe import embed_texts  # noqa: E402
from bankintent.config import TrainConfig  # noqa: E402
from bankintent.data import load_splits  # noqa: E402
from bankintent.selection import rank  # noqa: E402


def embeddings(splits, workdir: Path) -> dict[str, np.ndarray]:
    cache = workdir / "embeddings.npz"
    if cache.is_file():
        return dict(np.load(cache))
    arrays = {name: embed_texts(getattr(splits, name).texts, desc=f"embedding {name}") for name in ("train", "validation", "test")}
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return arrays


def start_set(y: np.ndarray, per_intent: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == k), per_intent, replace=False) for k in np.unique(y)]))


def simulate(x: dict, y: dict, strategy: str, seed: int, args) -> list[dict]:
    labelled = start_set(y["train"], args.start, seed)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for round_ in range(args.rounds + 1):
        clf, c, val_accuracy = probe.fit(x["train"][labelled], y["train"][labelled], x["validation"], y["validation"],
                                         TrainConfig().probe_c, seed, choose_on_validation=True)
        test_accuracy = float((clf.predict(x["test"]) == y["test"]).mean())
        rows.append({"seed": seed, "strategy": strategy, "round": round_, "labelled": len(labelled), "C": c,
                     "val_accuracy": val_accuracy, "test_accuracy": test_accuracy})
        print(f"seed {seed} {strategy:7s} round {round_}: {len(labelled):5d} labelled, validation {val_accuracy:.2%}, test {test_accuracy:.2%}",
              flush=True)
        if round_ == args.rounds:
            break
        pool = np.setdiff1d(np.arange(len(y["train"])), labelled)
        if strategy == "random":
            picked = rng.choice(pool, args.budget, replace=False)
        else:
            picked = pool[rank(clf.predict_proba(x["train"][pool]), x["train"][pool], args.budget, seed, args.candidates)]
        labelled = np.sort(np.concatenate([labelled, picked]))
    return rows


def labels_to_reach(curve: pd.DataFrame, target: float) -> float | None:
    """Labels at which ``curve`` (labelled, accuracy; rising) first reaches ``target``, linearly
    interpolated between rounds; None if it never does."""
    points = curve.sort_values("labelled")[["labelled", "accuracy"]].to_numpy()
    for (l0, a0), (l1, a1) in zip(points, points[1:]):
        if a0 >= target:
            return float(l0)
        if a1 >= target:
            return float(l0 + (target - a0) / (a1 - a0) * (l1 - l0))
    return float(points[0][0]) if points[0][1] >= target else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--workdir", default=None, help="where the embeddings are kept (default: OUTPUT/.work)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--start", type=int, default=10, help="labelled queries per intent at the start")
    parser.add_argument("--budget", type=int, default=500, help="queries labelled per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=None, help="select: uncertain candidates per pick (default: the command's)")
    parser.add_argument("--strategies", nargs="+", default=["select", "random"], choices=["select", "random"])
    args = parser.parse_args()
    from bankintent.selection import CANDIDATES

    args.candidates = args.candidates or CANDIDATES
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits("banking77", "text", "category", 0.1, 42)
    x = embeddings(splits, Path(args.workdir) if args.workdir else out / ".work")
    y = {name: np.asarray(splits.ids(getattr(splits, name))) for name in ("train", "validation", "test")}
    started = time.perf_counter()
    rows = [row for seed in args.seeds for strategy in args.strategies for row in simulate(x, y, strategy, seed, args)]
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    command = "python benchmarks/active_learning.py " + " ".join(sys.argv[1:])
    summary = summarise(results, args)
    (out / "results.md").write_text(f"`{command}` ({time.perf_counter() - started:.0f} s after the embeddings)\n\n{summary}\n")
    figure(results, out / "accuracy_vs_labels.png")
    print(summary)


def summarise(results: pd.DataFrame, args) -> str:
    table = results.groupby(["round", "labelled", "strategy"])["test_accuracy"].agg(["mean", "std"]).unstack("strategy")
    lines = ["| round | labelled | " + " | ".join(f"{s} (test)" for s in args.strategies) + " |",
             "|---|---|" + "---|" * len(args.strategies)]
    for (round_, labelled), row in table.iterrows():
        cells = [f"{row[('mean', s)]:.2%} ± {row[('std', s)]:.2%}" for s in args.strategies]
        lines.append(f"| {round_} | {labelled:,} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if {"select", "random"} <= set(args.strategies):
        mean = results.groupby(["strategy", "labelled"])["test_accuracy"].mean().rename("accuracy").reset_index()
        final = mean[mean.strategy == "random"].sort_values("labelled").iloc[-1]
        needed = labels_to_reach(mean[mean.strategy == "select"], final["accuracy"])
        rounds = mean.pivot(index="labelled", columns="strategy", values="accuracy").iloc[1:]
        above = bool((rounds["select"] > rounds["random"]).all())
        share = f"{needed:,.0f} labels, {needed / final['labelled']:.0%} of random's {final['labelled']:,}" if needed else "never"
        text += (f"\n\nselect above random after every round: {'yes' if above else 'no'}. Random's final test accuracy "
                 f"({final['accuracy']:.2%}) is reached by select with {share} (mean over seeds, interpolated between rounds).")
        (Path(args.output) / "summary.json").write_text(json.dumps({"select_above_random_every_round": above, "labels_needed": needed,
                                                                     "random_final_labels": int(final["labelled"]),
                                                                     "random_final_accuracy": float(final["accuracy"])}, indent=2))
    return text


def figure(results: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for strategy, group in results.groupby("strategy"):
        stats = group.groupby("labelled")["test_accuracy"].agg(["mean", "std"])
        ax.errorbar(stats.index, stats["mean"] * 100, yerr=stats["std"] * 100, marker="o", capsize=3, label=strategy)
    ax.set_xlabel("labelled training queries")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Active learning on Banking77 (linear probe, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
