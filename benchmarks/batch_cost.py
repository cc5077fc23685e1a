"""What a forward pass costs, and what cutting a batch by length saves, measured side by side.

    python benchmarks/batch_cost.py EXPORT [MODEL...] [--threads 1] [--rounds 3]

For each model folder (an ``bankintent export`` folder runs on ONNX Runtime, a run or model folder on
PyTorch):

1. The cost of one forward pass of n queries padded to L tokens, timed for n in 1, 4, 8 and L in 8,
   16, 32 and fitted by least squares as ``fixed + per_token * n * L``. ``fixed / per_token`` is the
   pass's fixed cost in tokens' worth of compute: what ``predict.ONNX_PASS_TOKENS`` and
   ``TORCH_CPU_PASS_TOKENS`` stand for.
2. ``Predictor.outputs`` on micro-batches of 4, 8 and 16 Banking77 test queries drawn at random, as
   the service forms them from concurrent requests: passes cut by length (``length_batches``, the
   default) against one pass per ``CPU_BATCH`` queries, each padded to its longest (``pass_tokens``
   infinite), alternating over ``--rounds`` rounds; milliseconds a query and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bankintent.data import iter_queries, locate  # noqa: E402
from bankintent.predict import Predictor  # noqa: E402


def best_seconds(call, repeats: int, rounds: int = 3) -> float:
    """The fastest of ``rounds`` mean times of ``repeats`` calls."""
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def pass_cost(predictor: Predictor) -> tuple[float, float]:
    """(fixed seconds, seconds per padded token) of one forward pass, fitted on n x L grid."""
    rows, times = [], []
    for n in (1, 4, 8):
        for length in (8, 16, 32):
            ids = np.full((n, length), 1000, dtype=np.int64)
            mask = np.ones_like(ids)
            times.append(best_seconds(lambda: predictor.backend(ids, mask), repeats=max(3, 256 // (n * length))))
            rows.append((1.0, n * length))
    (fixed, per_token), *_ = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)
    return float(fixed), float(per_token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="model folders: exports (ONNX Runtime) or runs (PyTorch)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (ONNX Runtime and PyTorch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=100, help="micro-batches per size and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [text for _, text in iter_queries(locate("banking77") / "test.csv")]
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s); micro-batches of random Banking77 test queries\n")
    print("| model | backend | fixed cost of a pass, ms | per padded token, ms | fixed cost in tokens | micro-batch | "
          "one pass per batch, ms/query | cut by length, ms/query | speed-up |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for folder in args.dirs:
        predictor = Predictor.load(folder, device="cpu", threads=args.threads)
        backend = type(predictor.backend).__name__
        fixed, per_token = pass_cost(predictor)
        cut_cost = predictor.backend.pass_tokens
        for size in (4, 8, 16):
            batches = [[texts[i] for i in rng.choice(len(texts), size, replace=False)] for _ in range(args.draws)]
            seconds = {"one": [], "cut": []}
            for round_ in range(args.rounds):
                for way in (("one", "cut") if round_ % 2 == 0 else ("cut", "one")):
                    predictor.backend.pass_tokens = float("inf") if way == "one" else cut_cost
                    start = time.perf_counter()
                    for batch in batches:
                        predictor.outputs(batch)
                    seconds[way].append((time.perf_counter() - start) / (size * len(batches)))
            one, cut = min(seconds["one"]) * 1000, min(seconds["cut"]) * 1000
            print(f"| {folder} | {backend} | {fixed * 1000:.3f} | {per_token * 1000:.4f} | {fixed / per_token:.1f} | {size} | "
                  f"{one:.3f} | {cut:.3f} | {one / cut:.2f}x |")
        predictor.backend.pass_tokens = cut_cost


if __name__ == "__main__":
    main()
