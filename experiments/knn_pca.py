"""Would a lower-dimensional kNN bank keep the default out-of-scope score's recall? The check behind
keeping the whole 384-dimensional bank (docs/benchmarks.md, "A distilled student").

    python experiments/knn_pca.py WORKDIR        # WORKDIR: benchmarks/out_of_scope.py --workdir, seeds 42-44 run

For each seed's cached outputs of the held-out-intents protocol (``outputs-label-SEED.npz``), the
training embeddings and every query are projected on the first D principal axes of the training
embeddings, and ``knn+msp`` is refitted on the projections exactly as training fits it (``ood``).
Printed: the recall of the held-out intents' validation queries (what chooses), of their test
queries, and of the out-of-domain probe set, at 95% in-scope validation coverage, mean over seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bankintent import ood
from bankintent.predict import softmax

SETS = ("val", "id_oos_val", "id_oos", "ood")


def recalls(outputs, dims: int) -> tuple[float, float, float]:
    features = {name: outputs[f"features/{name}"].astype(np.float32) for name in (*SETS, "train")}
    if dims < features["train"].shape[1]:
        train = features["train"]
        axes = np.linalg.svd(train - train.mean(0), full_matrices=False)[2][:dims].T
        features = {name: f / np.linalg.norm(f, axis=1, keepdims=True) @ axes for name, f in features.items()}
    return knn_msp_recalls(outputs, features, ood.fit_knn(features["train"]))


def knn_msp_recalls(outputs, features: dict[str, np.ndarray], fitted: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """``knn+msp`` with the kNN bank ``fitted`` (``ood.fit_knn``), fitted and thresholded as training
    does: the recall of the held-out validation queries, held-out test queries and probe set."""
    bank = ood.for_scoring(fitted)
    temperature = float(outputs["temperature"])
    knn = {name: ood.knn(features[name], bank) for name in SETS}
    msp = {name: 1 - softmax(outputs[f"logits/{name}"] / temperature).max(1) for name in SETS}
    stats = ood.fit_combination(knn["val"], msp["val"])
    scores = {name: ood.combined(knn[name], msp[name], stats) for name in SETS}
    threshold = ood.threshold_for_coverage(scores["val"], 0.95)
    return tuple(float(np.mean(scores[name] > threshold)) for name in ("id_oos_val", "id_oos", "ood"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 192, 128, 64])
    args = parser.parse_args()
    outputs = [np.load(args.workdir / f"outputs-label-{seed}.npz") for seed in args.seeds]
    print("| dimensions | recall, held-out validation | recall, held-out test | recall, out-of-domain |")
    print("|--:|--:|--:|--:|")
    for dims in args.dims:
        mean = np.mean([recalls(o, dims) for o in outputs], axis=0)
        print(f"| {dims} | {mean[0]:.1%} | {mean[1]:.1%} | {mean[2]:.1%} |")


if __name__ == "__main__":
    main()
