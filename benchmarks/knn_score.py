"""The cost of the ``knn`` out-of-scope score on a model folder's own kNN bank, two ways side by side in
one run: the float32 product of the queries with the whole bank (transposed into contiguous memory,
as ``ood.for_scoring`` prepared it before), and ``ood.knn`` as it scores now (the bank's int8 codes
pick each query's candidate rows, which are then scored in float32). Both give the same scores; the
run checks it. The queries are bank rows with noise added (in-scope traffic lies near training
queries, which is where the most rows compete for nearest). One BLAS thread, as
``Predictor.predict`` scores.

    python benchmarks/knn_score.py runs/demo
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from safetensors.numpy import load_file

from bankintent import ood
from bankintent.modeling import OOD_FILE
from bankintent.predict import model_folder, one_blas_thread


def milliseconds(score, queries: np.ndarray, repeats: int) -> float:
    score(queries)
    start = time.perf_counter()
    for _ in range(repeats):
        score(queries)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run, model folder or export with an ood.safetensors holding a knn_bank")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="queries per call")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.5, help="the noise's norm against a bank row's (1)")
    args = parser.parse_args()
    stored = load_file(model_folder(args.model) / OOD_FILE)
    if "knn_bank" not in stored:
        raise SystemExit(f"{args.model}: no knn_bank in {OOD_FILE}")
    bank_t = np.ascontiguousarray(stored["knn_bank"].T, dtype=np.float32)
    stats = ood.for_scoring({"knn_bank": stored["knn_bank"]})

    def dense(queries):
        return 1.0 - (ood._unit(queries) @ bank_t).max(1)

    def coded(queries):
        return ood.knn(queries, stats, k=1)

    rng = np.random.default_rng(0)
    rows, width = stored["knn_bank"].shape
    print(f"kNN bank {rows} x {width}, one BLAS thread, {args.repeats} calls each, queries: bank rows + noise of norm {args.noise}")
    print("| queries per call | float32 product, ms | int8 codes + float32 candidates, ms | speed-up | largest score difference |")
    print("|--:|--:|--:|--:|--:|")
    with one_blas_thread():
        for batch in args.batches:
            noise = rng.normal(size=(batch, width)).astype(np.float32)
            noise *= args.noise / np.linalg.norm(noise, axis=1, keepdims=True)
            queries = stored["knn_bank"][rng.choice(rows, batch)].astype(np.float32) + noise
            difference = np.abs(dense(queries) - coded(queries)).max()
            before, after = milliseconds(dense, queries, args.repeats), milliseconds(coded, queries, args.repeats)
            print(f"| {batch} | {before:.3f} | {after:.3f} | {before / after:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
