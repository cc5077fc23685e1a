"""Streaming file prediction against the in-memory path: queries/s and peak memory, side by side.

    python benchmarks/stream_predict.py runs/demo [--queries 100000] [--batch-size N] [--threads N] [--json]

The input is ``--queries`` generated queries (Banking77 test queries, each with a random greeting
and a random trailing number, so no two lines are alike) in a .txt file. Each path runs in its own
fresh process, so its peak resident memory (``ru_maxrss``) is its own:

- ``in-memory``: every query read into a list, one ``Predictor.predict`` call over all of them
  (sorted by length globally), every line written at the end: the simple code;
- ``streaming``: ``bankintent predict DIR --input FILE --output FILE.jsonl``, i.e.
  ``streaming.predict_file`` (chunks of batches, appended as they finish).

Both use the same forward batch size (``--batch-size``, default: the predictor's for the
backend). ``growth`` is the peak minus the memory after the model was loaded: what the input's
size costs. ``agreement`` is the share of lines whose intent equals the in-memory path's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bankintent.data import iter_queries, load_splits  # noqa: E402
from bankintent.predict import Predictor  # noqa: E402
from bankintent.results import markdown_table  # noqa: E402
from bankintent.streaming import predict_file  # noqa: E402

PATHS = ("in-memory", "streaming")
COLUMNS = ["path", "queries", "seconds", "queries/s", "peak MiB", "growth MiB", "agreement"]
GREETINGS = ["", "hi ", "hello, ", "hey there ", "good morning, ", "please help: "]


def generate(path: Path, count: int, data: str) -> None:
    splits = load_splits(data)
    texts = (splits.test or splits.validation).texts
    rng = random.Random(0)
    with open(path, "w") as out:
        for i in range(count):
            out.write(f"{rng.choice(GREETINGS)}{rng.choice(texts)} #{i}\n")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def in_memory(predictor: Predictor, input_path: Path, output_path: Path) -> None:
    texts = [text for _, text in iter_queries(input_path)]
    results = predictor.predict(texts)
    with open(output_path, "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in results)


def run_path(name: str, model_dir: str, input_path: Path, output_path: Path, batch_size: int | None) -> dict:
    """One path in this (fresh) process: timings and memory as a dict."""
    hf_logging.set_verbosity_error()
    predictor = Predictor.load(model_dir, batch_size=batch_size)
    predictor.predict(["warm up"])
    loaded = peak_mib()
    started = time.perf_counter()
    if name == "in-memory":
        in_memory(predictor, input_path, output_path)
    else:
        predict_file(predictor, input_path, output_path)
    seconds = time.perf_counter() - started
    return {"path": name, "seconds": seconds, "peak_mib": peak_mib(), "loaded_mib": loaded, "batch_size": predictor.batch_size}


def intents(path: Path) -> list[str]:
    with open(path) as lines:
        return [json.loads(line)["intent"] for line in lines]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="a training run, model folder or exported ONNX folder")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=None, help="queries per forward pass (default: for the backend)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    parser.add_argument("--data", default="banking77", help="where the queries are drawn from")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_path(args.child, args.dir, Path(args.input), Path(args.output), args.batch_size)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / "queries.txt"
        generate(input_path, args.queries, args.data)
        rows = []
        for name in PATHS:
            output = Path(tmp) / f"{name}.jsonl"
            command = [sys.executable, __file__, args.dir, "--child", name, "--input", str(input_path), "--output", str(output)]
            command += [f"--batch-size={args.batch_size}"] * bool(args.batch_size) + [f"--threads={args.threads}"] * bool(args.threads)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
            rows.append({**json.loads(result.stdout.splitlines()[-1]), "queries": args.queries, "output": output})
        reference = intents(rows[0]["output"])
        for row in rows:
            row["agreement"] = sum(a == b for a, b in zip(intents(row.pop("output")), reference)) / len(reference)

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = [{
        "path": r["path"], "queries": f"{r['queries']:,}", "seconds": f"{r['seconds']:.1f}",
        "queries/s": f"{r['queries'] / r['seconds']:.0f}", "peak MiB": f"{r['peak_mib']:.0f}",
        "growth MiB": f"{r['peak_mib'] - r['loaded_mib']:.0f}", "agreement": f"{r['agreement']:.2%}",
    } for r in rows]
    print(f"{args.dir}: batch size {rows[0]['batch_size']}, {args.threads or torch.get_num_threads()} PyTorch threads, "
          f"{os.cpu_count()} CPUs, CUDA: {torch.cuda.is_available()}")
    print(markdown_table(table, COLUMNS))


if __name__ == "__main__":
    main()
