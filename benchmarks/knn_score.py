"""The cost of the ``knn`` out-of-scope score on a model folder's own kNN bank, two layouts side by side
in one run: the bank as stored, row by row (converted to float32 once), and transposed into contiguous
memory as ``ood.for_scoring`` now prepares it. One BLAS thread, as ``Predictor.predict`` scores.

    python benchmarks/knn_score.py runs/demo
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


def milliseconds(queries: np.ndarray, stats: dict, repeats: int) -> float:
    ood.knn(queries, stats)
    start = time.perf_counter()
    for _ in range(repeats):
        ood.knn(queries, stats)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run, model folder or export with an ood.safetensors holding a knn_bank")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="queries per call")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    stored = load_file(model_folder(args.model) / OOD_FILE)
    if "knn_bank" not in stored:
        raise SystemExit(f"{args.model}: no knn_bank in {OOD_FILE}")
    rows = {"knn_bank": stored["knn_bank"].astype(np.float32)}
    transposed = ood.for_scoring({"knn_bank": stored["knn_bank"]})
    rng = np.random.default_rng(0)
    print(f"kNN bank {stored['knn_bank'].shape[0]} x {stored['knn_bank'].shape[1]}, one BLAS thread, {args.repeats} calls each")
    print("| queries per call | rows, ms | transposed, ms | speed-up |\n|--:|--:|--:|--:|")
    with threadpool_limits(1, "blas"):
        for batch in args.batches:
            queries = rng.normal(size=(batch, stored["knn_bank"].shape[1])).astype(np.float32)
            before, after = milliseconds(queries, rows, args.repeats), milliseconds(queries, transposed, args.repeats)
            print(f"| {batch} | {before:.3f} | {after:.3f} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
