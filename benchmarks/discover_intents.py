"""Do ``bankintent discover``'s clusters recover intents the model was never taught?

    python benchmarks/discover_intents.py --output docs/results/discover --workdir DIR [--seeds 42 43 44]

The protocol of ``benchmarks/out_of_scope.py`` (same seeds, same ``--workdir``: its trained runs are
reused, and trained there if missing): a model is trained on two thirds of the Banking77 intents; the
test queries of the other third, the *held-out* intents, are the traffic. ``bankintent discover`` (the
command's own function) clusters them, every one (``--all``) and only those the model calls out of
scope (the default). Reported per seed and as mean ± std: the adjusted Rand index against the true
intents (unclustered queries each count as their own cluster), purity (share of clustered queries
whose cluster's majority intent is theirs), the share of queries clustered, clusters found, and
held-out intents recovered (the majority intent of a cluster holding at least half of its queries).

The clustering cut (``discover.DISTANCE_THRESHOLD``) is chosen on the held-out intents' *validation*
queries: ``threshold_choice.csv`` is that comparison; the test queries choose nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from bankintent.data import load_splits, spreadsheet_text
from bankintent.discover import DISTANCE_THRESHOLD, MIN_SIZE, cluster, discover

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("out_of_scope", HERE / "out_of_scope.py")
out_of_scope = importlib.util.module_from_spec(spec)
spec.loader.exec_module(out_of_scope)


def scores(truth: list[str], clusters: np.ndarray) -> dict:
    truth, clusters = np.asarray(truth), np.asarray(clusters)
    singletons = clusters.copy()
    singletons[clusters < 0] = clusters.max() + 1 + np.arange((clusters < 0).sum())
    kept = clusters >= 0
    majority = {k: pd.Series(truth[clusters == k]).value_counts() for k in set(clusters[kept].tolist())}
    purity = sum(counts.iloc[0] for counts in majority.values()) / max(1, kept.sum())
    recovered = {counts.index[0] for counts in majority.values() if counts.iloc[0] >= 0.5 * (truth == counts.index[0]).sum()}
    return {"queries": len(truth), "intents": len(set(truth)), "ari": adjusted_rand_score(truth, singletons),
            "purity": float(purity), "clustered": float(kept.mean()), "clusters": len(majority),
            "intents_recovered": len(recovered)}


def ensure_run(seed: int, splits, workdir: Path) -> dict:
    """The out-of-scope protocol's ``label`` run of ``seed`` and its cached outputs (trained if missing)."""
    run = workdir / f"run-label-{seed}"
    if not (run / "adapter" / "COMPLETE").is_file():
        (workdir / f"outputs-label-{seed}.npz").unlink(missing_ok=True)
    protocol = argparse.Namespace(known=2 / 3, method="lpft", base_model=None, epochs=None, frozen_base=False)
    return out_of_scope.model_outputs(seed, "label", protocol, splits, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--workdir", required=True, help="benchmarks/out_of_scope.py's --workdir (runs are trained there if missing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8], help="cuts compared on validation")
    args = parser.parse_args()
    out, workdir = Path(args.output), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = load_splits("banking77", "text", "category", 0.1, 42)
    started = time.perf_counter()
    rows, choice = [], []
    for seed in args.seeds:
        outputs = ensure_run(seed, splits, workdir)
        held_out = outputs["sets"]["id_oos"]
        val = outputs["sets"]["id_oos_val"]
        features = outputs["features/id_oos_val"] / np.linalg.norm(outputs["features/id_oos_val"], axis=1, keepdims=True)
        for threshold in args.thresholds:
            choice.append({"seed": seed, "distance_threshold": threshold,
                           **scores(val.labels, cluster(features, threshold, min(MIN_SIZE, 3)))})
        traffic = workdir / f"held-out-test-{seed}.csv"
        out_of_scope.write_csv(traffic, (held_out.texts, held_out.labels))
        for selection in ("all", "out_of_scope"):
            folder = out / f"seed-{seed}-{selection}"
            shutil.rmtree(folder, ignore_errors=True)
            summary = discover(workdir / f"run-label-{seed}", traffic, folder, all_queries=selection == "all", seed=seed)
            found = pd.read_csv(folder / "queries.csv", dtype={"text": str}, keep_default_na=False)
            found["text"] = found["text"].map(spreadsheet_text)
            truth = dict(zip(held_out.texts, held_out.labels))
            rows.append({"seed": seed, "selection": selection, **scores([truth[t] for t in found["text"]], found["cluster"].to_numpy()),
                         "out_of_scope_share": summary["out_of_scope"] / summary["queries"]})
            (folder / "queries.csv").unlink()  # Banking77's own queries: the scores above are what is kept
            print(f"seed {seed} {selection}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in rows[-1].items() if k not in ("seed", "selection")), flush=True)
    results, thresholds = pd.DataFrame(rows), pd.DataFrame(choice)
    results.to_csv(out / "results.csv", index=False)
    thresholds.to_csv(out / "threshold_choice.csv", index=False)
    command = "python benchmarks/discover_intents.py " + " ".join(sys.argv[1:])
    table = summarise(results, ["selection"])
    choice_table = summarise(thresholds, ["distance_threshold"])
    (out / "results.md").write_text(
        f"`{command}` ({time.perf_counter() - started:.0f} s)\n\n## Held-out intents' test queries (mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))}; cut {DISTANCE_THRESHOLD}, clusters of at least {MIN_SIZE})\n\n{table}\n\n"
        f"## The cut, chosen on the held-out intents' validation queries (clusters of at least 3)\n\n{choice_table}\n")
    (out / "summary.json").write_text(json.dumps(results.groupby("selection").mean(numeric_only=True).drop(columns="seed").to_dict("index"), indent=2))
    print(table)


def summarise(frame: pd.DataFrame, by: list[str]) -> str:
    columns = ["queries", "ari", "purity", "clustered", "clusters", "intents", "intents_recovered"]
    grouped = frame.groupby(by)[columns].agg(["mean", "std"])
    lines = ["| " + " | ".join(by + columns) + " |", "|" + "---|" * (len(by) + len(columns))]
    for key, row in grouped.iterrows():
        cells = [f"{row[(c, 'mean')]:.3f} ± {row[(c, 'std')]:.3f}" if c in ("ari", "purity", "clustered")
                 else f"{row[(c, 'mean')]:.1f}" for c in columns]
        lines.append("| " + " | ".join(map(str, key if isinstance(key, tuple) else (key,))) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
