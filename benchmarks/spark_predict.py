"""Spark batch scoring against the single-process streaming predictor, side by side in one run.

    python benchmarks/spark_predict.py MODEL_DIR [--queries 100000] [--masters 'local[1]' 'local[2]'] [--output FILE.json]

``MODEL_DIR``: a training run, a model folder or an ONNX export (the service's int8 export is what a
data team would ship). The queries are Banking77's training and test queries repeated to
``--queries`` rows (with an ``id`` column), written once as CSV (for ``bankintent predict --input``)
and Parquet (for ``--engine spark``). Measured, each from a cold start (model loading included, as a
job pays it):

- ``streaming``: ``bankintent.streaming.predict_file``, one process, the predictor's default threads
  (what ``bankintent predict --input`` runs);
- ``spark local[N]``: ``bankintent.spark.score_file`` on a local Spark of N cores (Spark's start
  included), one model copy with one thread per core.

``ratio`` is the engine's queries per second over streaming's; ``q/s per core`` what to expect of one
executor core on a cluster. Parity: the 3,080 Banking77 test queries scored by both paths, the share
of equal answers (intent or out of scope) and the largest difference of ``oos_score``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from bankintent.data import load_splits  # noqa: E402
from bankintent.predict import Predictor  # noqa: E402
from bankintent.results import markdown_table  # noqa: E402
from bankintent.spark import score_file  # noqa: E402
from bankintent.streaming import predict_file  # noqa: E402


def write_queries(folder: Path, texts: list[str], n: int) -> tuple[Path, Path]:
    frame = pd.DataFrame({"id": range(n), "text": [texts[i % len(texts)] for i in range(n)]})
    frame.to_csv(folder / "queries.csv", index=False)
    frame.to_parquet(folder / "queries.parquet", index=False)
    return folder / "queries.csv", folder / "queries.parquet"


def run_streaming(model: str, csv_path: Path, out: Path) -> float:
    started = time.perf_counter()
    predict_file(lambda: Predictor.load(model), csv_path, out)
    return time.perf_counter() - started


def run_spark(model: str, parquet: Path, out: Path, master: str) -> float:
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    score_file(model, parquet, out, master=master)
    elapsed = time.perf_counter() - started
    SparkSession.builder.getOrCreate().stop()  # the next master starts its own
    return elapsed


def parity(model: str, folder: Path, master: str) -> dict:
    """Both paths on the 3,080 test queries: the share of equal answers, the largest oos_score difference."""
    texts = load_splits("banking77").test.texts
    csv_path, parquet = write_queries(folder, texts, len(texts))
    run_streaming(model, csv_path, folder / "parity.jsonl")
    run_spark(model, parquet, folder / "parity.parquet", master)
    local = pd.read_json(folder / "parity.jsonl", lines=True).sort_values("id").reset_index(drop=True)
    spark = pd.read_parquet(folder / "parity.parquet").sort_values("id").reset_index(drop=True)
    same = (local["intent"] == spark["intent"]).mean()
    return {"queries": len(texts), "agreement": float(same),
            "max_oos_score_difference": float((local["oos_score"] - spark["oos_score"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a training run, model folder or ONNX export")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    splits = load_splits("banking77")
    texts = splits.train.texts + splits.test.texts
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv_path, parquet = write_queries(folder, texts, args.queries)
        seconds = run_streaming(args.model, csv_path, folder / "streaming.jsonl")
        rows.append({"engine": "streaming (bankintent predict --input)", "cores": os.cpu_count(), "seconds": seconds})
        for master in args.masters:
            out = folder / f"spark-{''.join(c for c in master if c.isalnum())}.parquet"  # no [ ]: Hadoop reads them as a glob
            seconds = run_spark(args.model, parquet, out, master)
            cores = int(master[len("local["):-1]) if master.startswith("local[") and master[6:-1].isdigit() else None
            rows.append({"engine": f"spark {master}", "cores": cores, "seconds": seconds})
            shutil.rmtree(out)
        (folder / "parity").mkdir()
        check = parity(args.model, folder / "parity", args.masters[-1])
    base = args.queries / rows[0]["seconds"]
    for row in rows:
        row["queries/s"] = args.queries / row["seconds"]
        row["ratio"] = row["queries/s"] / base
        row["q/s per core"] = row["queries/s"] / row["cores"] if row["cores"] else None
    table = [{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    print(f"{args.queries:,} queries, model {args.model}")
    print(markdown_table(table, list(table[0])))
    print(f"parity on the {check['queries']:,} test queries ({args.masters[-1]}): {check['agreement']:.2%} same answers, "
          f"largest oos_score difference {check['max_oos_score_difference']:.2e}")
    if args.output:
        Path(args.output).write_text(json.dumps({"queries": args.queries, "model": args.model, "rows": rows, "parity": check}, indent=1))


if __name__ == "__main__":
    main()
