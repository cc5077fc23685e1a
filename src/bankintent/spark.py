"""Batch scoring on Apache Spark: the same model folder, the same answers as ``Predictor``, on a cluster.

``predict_udf(model_dir)`` is a pandas UDF of the iterator-of-batches form: each Python worker loads
the model once (``Predictor.load``: a training run, a model folder or an ONNX export) and then
scores the Arrow batches Spark hands it, so the cluster's scheduler, retries and progress (Spark's
UI and logs) do the work that a home-made job runner would. The model folder is read from a path
every executor can see (a shared file system, DBFS), or shipped with ``SparkContext.addFile(DIR,
recursive=True)`` / ``spark-submit --files``: a path that does not exist on the executor is looked up
by its folder name with ``SparkFiles.get``.

Each input row gives one output row: the fields of ``Predictor.predict`` (``FIELDS``), and
``error`` for a row that could not be scored (a null or empty text), whose other fields are null:
such rows are kept, never dropped. ``score_file`` is ``bankintent predict --engine spark``: Parquet,
CSV, JSONL or text (a query a line) in, Parquet out, every input column kept (one named like a
prediction field as ``input_<name>``, as ``bankintent predict`` writes it without Spark).

One model copy per Python worker: with ``threads`` (default 1) intra-op threads each, give Spark one
task slot per core (``spark.task.cpus`` 1) and the executor's cores are all busy; docs/spark.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from bankintent.data import input_column_names, spreadsheet_text
from bankintent.errors import BankintentError, DataError
from bankintent.text import blank

# predict.ANSWER_FIELDS but the text, the input row's own column (spelt out: the driver need not import torch)
FIELDS = ("intent", "confidence", "out_of_scope", "oos_score", "oos_threshold", "oos_method", "closest_intent", "top_k")
INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".txt": "text"}  # as predict reads without Spark
_TYPES = {
    "intent": "string", "confidence": "double", "out_of_scope": "boolean", "oos_score": "double",
    "oos_threshold": "double", "oos_method": "string", "closest_intent": "string",
    "top_k": "array<struct<intent: string, confidence: double>>", "error": "string",
}


def schema(columns: Sequence[str] = FIELDS) -> str:
    """The UDF's return type (a Spark DDL struct) for these prediction fields, plus ``error``."""
    unknown = [c for c in columns if c not in FIELDS]
    if unknown:
        raise DataError(f"unknown prediction field {unknown[0]!r}; choose from {', '.join(FIELDS)}")
    return ", ".join(f"{name} {_TYPES[name]}" for name in [*columns, "error"])


def _model_path(model_dir: str) -> str:
    """``model_dir`` if this process sees it, else the copy shipped with ``addFile`` / ``--files``."""
    if os.path.exists(model_dir):
        return model_dir
    from pyspark import SparkFiles

    shipped = SparkFiles.get(Path(model_dir.rstrip("/")).name)
    if not os.path.exists(shipped):
        raise DataError(f"{model_dir}: no such model folder on this executor, nor shipped with SparkContext.addFile")
    return shipped


def score_batch(predictor, texts: pd.Series, columns: Sequence[str] = FIELDS, top_k: int = 3) -> pd.DataFrame:
    """The prediction fields of a batch of texts (one row each, in order); null or empty texts get
    nulls and an ``error``."""
    valid = [isinstance(t, str) and not blank(t) for t in texts]
    results = iter(predictor.predict([t for t, ok in zip(texts, valid) if ok], top_k=top_k)) if any(valid) else iter(())
    rows = []
    for text, ok in zip(texts, valid):
        if ok:
            result = next(results)
            rows.append({**{c: result[c] for c in columns}, "error": None})
        else:
            problem = "empty text" if isinstance(text, str) else "null text" if pd.isna(text) else f"not text ({type(text).__name__})"
            rows.append({**{c: None for c in columns}, "error": problem})
    return pd.DataFrame(rows, columns=[*columns, "error"])


def predict_udf(model_dir: str | Path, top_k: int = 3, columns: Sequence[str] = FIELDS, batch_size: int | None = None,
                threads: int | None = 1, oos_score: str | None = None, oos_threshold: float | None = None):
    """A pandas UDF mapping a text column to a struct of the prediction fields ``columns`` and ``error``:

        df.withColumn("prediction", predict_udf("runs/demo")("text")).select("id", "prediction.*")

    ``threads``: intra-op threads per model copy (torch or ONNX Runtime); one copy runs in each Python
    worker, so 1 suits one task slot per core. ``oos_score``, ``oos_threshold``: as for ``Predictor.load``."""
    from pyspark.sql.functions import pandas_udf

    model_dir, columns = str(model_dir), tuple(columns)
    return_type = schema(columns)

    @pandas_udf(return_type)
    def predict(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from bankintent.predict import Predictor

        if threads:
            import torch

            torch.set_num_threads(threads)
        predictor = Predictor.load(_model_path(model_dir), batch_size=batch_size, threads=threads,
                                   oos_score=oos_score, oos_threshold=oos_threshold)
        for texts in batches:
            yield score_batch(predictor, texts, columns, top_k)

    return predict


PANDAS_WARNING = "PySpark does not yet fully support pandas"


def session(master: str | None = None, app_name: str = "bankintent"):
    """The active Spark session, or a new one on ``master`` (``local[2]``: two cores of this machine)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise DataError("Spark scoring needs pyspark (and Java 17 or later): pip install 'bankintent[spark]'") from None
    # PySpark warns, in the driver and in each Python worker, that it does not yet fully support pandas 3;
    # the scoring here is tested on the pandas this project pins (tests/test_spark.py)
    warnings.filterwarnings("ignore", PANDAS_WARNING, FutureWarning)
    builder = SparkSession.builder.appName(app_name).config("spark.executorEnv.PYTHONWARNINGS",
                                                              f"ignore:{PANDAS_WARNING}:FutureWarning")
    if master:
        builder = builder.master(master)
    if (master or "").startswith("local"):  # the workers run this Python, which has bankintent (a cluster's is its own)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 (PySparkRuntimeError: the JVM did not start)
        if "JAVA_GATEWAY_EXITED" not in str(exc) and type(exc).__name__ != "PySparkRuntimeError":
            raise
        raise DataError(f"Spark did not start (master {master or 'default'}): its Java process exited; Spark needs Java 17 or "
                        f"later (java -version, JAVA_HOME) and a master such as local[2] or spark://HOST:7077; the lines above "
                        f"are Spark's own") from None
    spark.sparkContext.setLogLevel("ERROR")  # Spark's stage progress bar stays; its INFO/WARN chatter goes
    return spark


def input_format(input_path: str | Path) -> str:
    """Spark's reader for the input file (``parquet``, ``csv``, ``json`` or ``text``); DataError for another
    extension or a local file that does not exist."""
    path = Path(input_path)
    kind = INPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown input format {path.suffix or '(no extension)'!r}; use {', '.join(INPUT_FORMATS)}")
    if not path.exists() and "://" not in str(input_path):
        raise DataError(f"{path}: no such file")
    return kind


def read_queries(spark, input_path: str | Path, text_column: str = "text"):
    """A DataFrame of a Parquet, CSV (with a header) or JSONL file, checked for ``text_column``; of a
    text file, its lines as ``text``, as ``bankintent predict`` reads one without Spark. A JSONL file's
    columns keep its first record's order (Spark's reader sorts them by name)."""
    kind = input_format(input_path)
    reader = spark.read
    if kind == "csv":
        reader = reader.option("header", True).option("multiLine", True).option("escape", '"')
        if Path(input_path).suffix.lower() == ".tsv":  # tab-separated, as the local engine reads a .tsv
            reader = reader.option("sep", "\t")
    frame = getattr(reader, kind)(str(input_path))
    if kind == "text":
        return frame.withColumnRenamed("value", "text")
    if text_column not in frame.columns:
        raise DataError(f"{input_path}: missing column {text_column!r} (columns: {', '.join(frame.columns)})")
    if kind == "json":
        frame = frame.select(*[frame[f"`{name}`"] for name in _first_record_order(input_path, frame.columns)])
    if kind == "csv":  # a sheet bankintent wrote: its formula-like texts back as they were, as the local engine reads them
        from pyspark.sql.functions import pandas_udf

        as_written = pandas_udf(lambda texts: texts.map(lambda text: spreadsheet_text(text) if isinstance(text, str) else text), "string")
        frame = frame.withColumn(text_column, as_written(frame[f"`{text_column}`"]))
    return frame


def _first_record_order(path: str | Path, columns: list[str]) -> list[str]:
    """``columns`` in the order of a local JSONL file's first record, those it lacks after them; as they
    are where the file cannot be read here (a remote path, a folder)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = next((json.loads(line) for line in handle if line.strip()), {})
    except (OSError, ValueError):
        return columns
    ordered = [name for name in first if name in columns] if isinstance(first, dict) else []
    return ordered + [name for name in columns if name not in ordered]


def score_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, text_column: str = "text",
               top_k: int = 3, master: str | None = None, batch_size: int | None = None, threads: int | None = 1,
               oos_score: str | None = None, oos_threshold: float | None = None, overwrite: bool = False) -> tuple[int, int]:
    """``bankintent predict --engine spark``: score every row of ``input_path`` into the Parquet
    folder ``output_path`` (the input's columns, one named like a prediction field as
    ``input_<name>``, then the prediction fields and ``error``); returns the rows written and how many
    of them have an ``error`` (not scored). An input of fewer partitions than the session's cores (one
    small file) is repartitioned so that every core scores; rows keep their columns, not their order."""
    output = Path(output_path)
    if output.suffix.lower() != ".parquet":
        raise DataError(f"{output}: --engine spark writes Parquet; name the output .parquet")
    if output.exists() and not overwrite:
        raise DataError(f"{output}: already exists; pass --overwrite to replace it")
    from bankintent.modeling import read_spec
    from bankintent.predict import model_folder

    if input_format(input_path) == "text":  # these fail before Spark starts
        text_column = "text"
    folder = model_folder(Path(model_dir).expanduser().resolve())
    read_spec(folder)
    spark = session(master)
    done: dict = {}  # "written" once the output is whole, then "counts": (rows, rows with an error)

    def job() -> None:
        frame = read_queries(spark, input_path, text_column)
        udf = predict_udf(folder, top_k=top_k, batch_size=batch_size, threads=threads, oos_score=oos_score, oos_threshold=oos_threshold)
        # Spark's column names ignore case: "Intent" clashes with the field "intent" too
        names = input_column_names(frame.columns, {*FIELDS, "error", "_prediction"})
        frame = frame.toDF(*[names[column] for column in frame.columns])  # by position: "intent" and "input_intent" both renamed
        cores = spark.sparkContext.defaultParallelism
        if frame.rdd.getNumPartitions() < cores:  # one small file is one partition: spread it over every core
            frame = frame.repartition(cores)
        scored = frame.withColumn("_prediction", udf(frame[names[text_column]])).select(*frame.columns, "_prediction.*")
        scored.write.parquet(str(output), mode="overwrite" if overwrite else "errorifexists")
        done["written"] = True
        from pyspark.sql import functions

        done["counts"] = spark.read.parquet(str(output)).agg(functions.count("*"), functions.count("error")).first()

    try:
        stoppable(spark, job)
        written, failed = done["counts"]
    except BankintentError:
        raise
    except KeyboardInterrupt:
        if done.get("written"):  # stopped while its rows were counted: the file is whole
            raise KeyboardInterrupt(f"interrupted: {output} was written whole; its rows were not counted") from None
        spark.stop()  # its cancelled tasks stop writing: a file of theirs written after the folder went would bring it back
        _remove_partial(output)
        raise KeyboardInterrupt(f"interrupted: {output} not written (Spark's partial folder removed); run the same command "
                                f"again") from None
    except Exception as exc:  # noqa: BLE001 (py4j's Py4JJavaError, Spark's AnalysisException: the job failed)
        _remove_partial(output)
        reachable = " (is the master running and reachable from here?)" if master and not master.startswith("local") else ""
        raise DataError(f"the Spark job failed (master {master or 'default'}): {spark_cause(exc)}{reachable}") from None
    return written, failed


def stoppable(spark, job) -> None:
    """Run ``job`` (a Spark action) in a thread, so that Ctrl-C, which Python takes in the main thread,
    cancels it from there, Spark's logs off: PySpark's own handler cancelled it from inside the py4j call
    the main thread was blocked in, and printed py4j's tracebacks and Spark's log of every task aborted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        job()
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
            failed.append(exc)

    worker = threading.Thread(target=run, name="spark-job", daemon=True)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        spark.sparkContext.setLogLevel("OFF")  # the aborted tasks' errors: the cancel's, not the job's
        spark.sparkContext.cancelAllJobs()
        worker.join(60)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if failed:
        raise failed[0]


def _remove_partial(output: Path) -> None:
    """A Parquet folder Spark did not finish (no ``_SUCCESS``) would refuse the rerun as existing output."""
    if output.is_dir() and not (output / "_SUCCESS").is_file():
        shutil.rmtree(output, ignore_errors=True)


def spark_cause(exc: BaseException) -> str:
    """The line of a Spark error that says what failed (the Java exception's), not py4j's call around it."""
    lines = [line.strip().lstrip(":").strip() for line in str(exc).splitlines() if line.strip()]
    cause = next((line for line in lines if re.match(r"[\w.$]+(Exception|Error)\b", line)), lines[0] if lines else type(exc).__name__)
    return cause[:300]
