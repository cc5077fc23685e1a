"""Would ``knn+msp+rmd`` catch more if its parts were put on one scale by their ranks rather than by
their mean and standard deviation? The check behind keeping the standardised sum
(docs/results/out_of_scope/README.md, "Ranks in place of standardised parts, not kept").

    python experiments/ranked_parts.py WORKDIR     # WORKDIR: benchmarks/out_of_scope.py --workdir, seeds 42-44 run

A mean and standard deviation describe where most in-scope queries lie; the threshold sits in the
tail, long for ``msp`` and short for ``knn``. A rank (the share of in-scope validation queries a
score exceeds, 0 to 1; past the highest, 1 plus the excess over it in units of the distance from the
median to the highest) weighs the tails alike. For each seed's cached outputs (``outputs-label-SEED.npz``)
this sums the three parts, each standardised (``z``, the project's) or ranked in three ways: the
step of the validation scores' empirical distribution (``step``), interpolated between them
(``interpolated``), or between 1,001 of their quantiles (``quantiles``, what a model folder would
store), with msp's weight 0.25, 0.5 or 1 and rmd's 0.25. Printed, means over the seeds at 95%
in-scope validation coverage: the recall of the held-out intents' validation queries (what chooses),
of their test queries, the test coverage, and the out-of-domain recall.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bankintent import ood
from bankintent.predict import softmax
from bankintent.results import markdown_table

SETS = ("val", "test", "id_oos", "id_oos_val", "ood")


def beyond(scores: np.ndarray, inside: np.ndarray, reference: np.ndarray) -> np.ndarray:
    top, middle = reference.max(), np.median(reference)
    return np.where(scores > top, 1 + (scores - top) / (top - middle), inside)


SCALES = {
    "z": lambda x, ref: (x - ref.mean()) / ref.std(),
    "step": lambda x, ref: beyond(x, np.searchsorted(np.sort(ref), x) / len(ref), ref),
    "interpolated": lambda x, ref: beyond(x, np.interp(x, np.sort(ref), np.linspace(0, 1, len(ref))), ref),
    "quantiles": lambda x, ref: beyond(x, np.interp(x, np.quantile(ref, np.linspace(0, 1, 1001)), np.linspace(0, 1, 1001)), ref),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        outputs = np.load(args.workdir / f"outputs-label-{seed}.npz")
        labels = [str(x) for x in outputs["labels"]]
        train = pd.read_csv(args.workdir / f"data-label-{seed}" / "train.csv")
        y = np.array([labels.index(c) for c in train.category if c in labels])
        features = {n: outputs[f"features/{n}"] for n in (*SETS, "train")}
        probs = {n: softmax(outputs[f"logits/{n}"] / float(outputs["temperature"])) for n in SETS}
        stats = ood.for_scoring(ood.fit(features["train"], y, len(labels)))
        parts = {"knn": {n: ood.knn(features[n], stats) for n in SETS}, "msp": {n: 1 - probs[n].max(1) for n in SETS},
                 "rmd": {n: ood.relative_mahalanobis(features[n], stats) for n in SETS}}
        for scale, put in SCALES.items():
            scaled = {part: {n: put(values[n], values["val"]) for n in SETS} for part, values in parts.items()}
            for msp_weight in (0.25, 0.5, 1.0):
                score = {n: scaled["knn"][n] + msp_weight * scaled["msp"][n] + 0.25 * scaled["rmd"][n] for n in SETS}
                threshold = ood.threshold_for_coverage(score["val"], 0.95)
                rows.append({"scale": scale, "msp weight": msp_weight, "seed": seed,
                             "recall, held-out validation": (score["id_oos_val"] > threshold).mean(),
                             "recall, held-out test": (score["id_oos"] > threshold).mean(),
                             "coverage (test)": (score["test"] <= threshold).mean(),
                             "recall, out-of-domain": (score["ood"] > threshold).mean()})
    frame = pd.DataFrame(rows)
    table = []
    for (scale, weight), group in frame.groupby(["scale", "msp weight"], sort=False):
        by_seed = ", ".join(f"{v:.1%}" for v in group["recall, held-out validation"])
        table.append({"scale": scale, "msp weight": weight, "recall, held-out validation": f"{group['recall, held-out validation'].mean():.2%} ({by_seed})",
                      **{c: f"{group[c].mean():.2%}" for c in ("recall, held-out test", "coverage (test)", "recall, out-of-domain")}})
    print(markdown_table(table, list(table[0])))


if __name__ == "__main__":
    main()
