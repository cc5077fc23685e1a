"""What each out-of-scope score costs beside the forward pass, side by side in one run, on a model
folder's own statistics (``ood.safetensors``, prepared by ``ood.for_scoring`` as ``Predictor`` does).
One BLAS thread, as ``Predictor.predict`` scores; the scores are timed in turn, round after round,
so that a slower minute of the machine falls on all of them alike.

    python benchmarks/oos_score_cost.py RUN [--batches 1 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits

from bankintent import ood
from bankintent.modeling import OOD_FILE
from bankintent.predict import model_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run or model folder whose ood.safetensors was fitted by this version")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="queries per call")
    parser.add_argument("--repeats", type=int, default=100, help="calls per score and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    stats = ood.for_scoring(load_file(model_folder(args.model) / OOD_FILE))
    names = [name for name in ood.SCORES if ood.supports(name, stats)]
    dims, intents = stats["centroids"].shape[1], stats["centroids"].shape[0]
    rng = np.random.default_rng(0)
    print(f"{args.model}: {intents} intents, {dims}-wide embeddings, kNN bank of {len(stats['knn_bank'])}; one BLAS thread, "
          f"{args.rounds} rounds of {args.repeats} calls; median over rounds")
    print("| queries per call | " + " | ".join(f"{name}, ms" for name in names) + " |")
    print("|--:|" + "--:|" * len(names))
    with threadpool_limits(1, "blas"):
        for batch in args.batches:
            features = rng.normal(size=(batch, dims)).astype(np.float32)
            probabilities = rng.dirichlet(np.ones(intents), size=batch).astype(np.float32)
            times: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(args.rounds):
                for name in names:
                    ood.score(name, probabilities, features, stats)
                    start = time.perf_counter()
                    for _ in range(args.repeats):
                        ood.score(name, probabilities, features, stats)
                    times[name].append((time.perf_counter() - start) / args.repeats * 1000)
            print(f"| {batch} | " + " | ".join(f"{np.median(times[name]):.3f}" for name in names) + " |")


if __name__ == "__main__":
    main()
