"""How many k-means prototypes of each intent should the kNN bank hold? The check behind
``ood.KNN_PROTOTYPES`` (docs/results/out_of_scope/README.md, "Prototypes in place of every training query").

    python experiments/knn_prototypes.py WORKDIR     # WORKDIR: benchmarks/out_of_scope.py --workdir, seeds 42-44 run

For each seed's cached outputs of the held-out-intents protocol (``outputs-label-SEED.npz``), the bank
is every training embedding (``all``) or each intent's PROTOTYPES k-means centroids, for several
k-means seeds; ``knn+msp`` is refitted on it exactly as training fits it (``ood``). The cache keeps no
training labels, so an intent's training queries are those the model predicts it for (its training
accuracy is near 100%). Printed: the recall of the held-out intents' validation queries (what
chooses), of their test queries, and of the out-of-domain probe set, at 95% in-scope validation
coverage, mean over the protocol's seeds, for each k-means seed and their mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bankintent import ood
from knn_pca import SETS, knn_msp_recalls  # experiments/knn_pca.py, beside this script


def recalls(outputs, prototypes: int | None, seed: int) -> tuple[float, float, float]:
    features = {name: outputs[f"features/{name}"].astype(np.float32) for name in (*SETS, "train")}
    labels = outputs["logits/train"].argmax(1)
    fitted = ood.fit_knn(features["train"]) if prototypes is None else ood.fit_knn(features["train"], labels, seed, prototypes)
    return knn_msp_recalls(outputs, features, fitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--prototypes", type=int, nargs="+", default=[8, 12, 16, 24])
    parser.add_argument("--kmeans-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    outputs = [np.load(args.workdir / f"outputs-label-{seed}.npz") for seed in args.seeds]
    print("| bank | k-means seed | recall, held-out validation | recall, held-out test | recall, out-of-domain |")
    print("|---|--:|--:|--:|--:|")
    print("| all training queries | - | {:.1%} | {:.1%} | {:.1%} |".format(*np.mean([recalls(o, None, 0) for o in outputs], axis=0)))
    for prototypes in args.prototypes:
        runs = [np.mean([recalls(o, prototypes, seed) for o in outputs], axis=0) for seed in args.kmeans_seeds]
        for seed, mean in zip(args.kmeans_seeds, runs):
            print(f"| {prototypes} an intent | {seed} | {mean[0]:.1%} | {mean[1]:.1%} | {mean[2]:.1%} |")
        print("| {} an intent | mean | {:.1%} | {:.1%} | {:.1%} |".format(prototypes, *np.mean(runs, axis=0)))


if __name__ == "__main__":
    main()
