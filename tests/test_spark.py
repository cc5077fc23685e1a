"""Batch scoring on Spark (bankintent.spark) on a local Spark session with the tiny model."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (make test installs it)", allow_module_level=True)

from bankintent.errors import DataError  # noqa: E402
from bankintent.export import export  # noqa: E402
from bankintent.predict import ANSWER_FIELDS, Predictor  # noqa: E402
from bankintent.spark import FIELDS, predict_udf, score_batch  # noqa: E402

QUERIES = ["where is my new card", "i lost my card", None, "   ", "exchange rates today", "my top-up failed"]


@pytest.fixture(scope="module")
def spark():
    from bankintent.spark import session as spark_session

    session = spark_session("local[1]", "bankintent-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def queries(spark):
    frame = pd.DataFrame({"id": range(len(QUERIES)), "text": QUERIES, "channel": ["app"] * len(QUERIES)})
    return spark.createDataFrame(frame, "id long, text string, channel string")


def _scored(spark, queries, model) -> pd.DataFrame:
    udf = predict_udf(model, top_k=2)
    rows = queries.withColumn("p", udf("text")).select("id", "channel", "p.*")
    return rows.toPandas().sort_values("id").reset_index(drop=True)


def test_the_udf_gives_the_predictors_answers_and_keeps_bad_rows(spark, queries, tiny_probe_run):
    out = _scored(spark, queries, tiny_probe_run)
    assert list(out.columns) == ["id", "channel", *FIELDS, "error"] and len(out) == len(QUERIES)
    assert (out["channel"] == "app").all()  # key columns kept
    assert list(out["error"].fillna("")) == ["", "", "null text", "empty text", "", ""]
    assert out.loc[[2, 3], "intent"].isna().all()
    good = [0, 1, 4, 5]
    expected = Predictor.load(tiny_probe_run).predict([QUERIES[i] for i in good], top_k=2)
    assert tuple(expected[0]) == ANSWER_FIELDS and FIELDS == ANSWER_FIELDS[1:]  # the predictor's fields, but the text
    assert list(out.loc[good, "intent"]) == [e["intent"] for e in expected]
    assert list(out.loc[good, "closest_intent"]) == [e["closest_intent"] for e in expected]
    for got, want in zip(out.loc[good].itertuples(), expected):
        assert got.oos_score == pytest.approx(want["oos_score"], abs=1e-5)
        assert [t["intent"] for t in got.top_k] == [t["intent"] for t in want["top_k"]]
        assert [t["confidence"] for t in got.top_k] == pytest.approx([t["confidence"] for t in want["top_k"]], abs=1e-5)
        assert isinstance(got.out_of_scope, bool)


def test_the_schema_types(spark, queries, tiny_probe_run):
    schema = {f.name: f.dataType.simpleString() for f in queries.withColumn("p", predict_udf(tiny_probe_run)("text")).select("p.*").schema}
    assert schema == {"intent": "string", "confidence": "double", "out_of_scope": "boolean", "oos_score": "double",
                      "oos_threshold": "double", "oos_method": "string", "closest_intent": "string",
                      "top_k": "array<struct<intent:string,confidence:double>>", "error": "string"}
    with pytest.raises(DataError, match="unknown prediction field 'intnet'"):
        predict_udf(tiny_probe_run, columns=["intnet"])


def test_an_onnx_int8_export_and_a_folder_shipped_with_add_file(spark, queries, tiny_probe_run, tmp_path):
    onnx = export(tiny_probe_run, tmp_path / "int8", quantize="int8")
    out = _scored(spark, queries, onnx)
    expected = Predictor.load(onnx).predict([QUERIES[i] for i in (0, 1, 4, 5)])
    assert list(out.loc[[0, 1, 4, 5], "intent"]) == [e["intent"] for e in expected]
    # a path the executors do not see (as on a cluster): the copy shipped with addFile, found by its folder name
    shipped = shutil.copytree(onnx, tmp_path / "shipped_model")
    spark.sparkContext.addFile(str(shipped), recursive=True)
    unseen = tmp_path / "on_the_driver_only" / "shipped_model"
    assert not unseen.exists()
    again = _scored(spark, queries, str(unseen))
    assert list(again["intent"].fillna("-")) == list(out["intent"].fillna("-"))


def test_score_batch_without_spark(tiny_probe_run):
    frame = score_batch(Predictor.load(tiny_probe_run), pd.Series(["i lost my card", None, 3]), columns=("intent",))
    assert list(frame.columns) == ["intent", "error"]
    assert frame["intent"].notna().tolist() == [True, False, False]
    assert frame["error"].fillna("").tolist() == ["", "null text", "not text (int)"]


def test_cli_engine_spark_end_to_end(tiny_probe_run, tmp_path):
    pd.DataFrame({"ticket": ["a", "b", "c"], "text": ["i lost my card", "", "exchange rates today"],  # an earlier scoring's columns:
                  "intent": ["lost_card", None, None], "input_intent": ["x", None, None], "Error": [None, "e", None]}
                 ).to_parquet(tmp_path / "logs.parquet")
    command = [sys.executable, "-m", "bankintent.cli", "predict", str(tiny_probe_run), "--input", str(tmp_path / "logs.parquet"),
               "--output", str(tmp_path / "scored.parquet"), "--engine", "spark", "--master", "local[1]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"3 rows written to {tmp_path / 'scored.parquet'}, 2 scored (1 not scored: no text" in done.stdout
    scored = pd.read_parquet(tmp_path / "scored.parquet").sort_values("ticket")
    assert list(scored["ticket"]) == ["a", "b", "c"] and list(scored["error"].fillna("")) == ["", "empty text", ""]
    # an input column named like a prediction field (in any case: Spark's names ignore it) is kept as input_<name>, as
    # predict without Spark keeps it; one named input_<field> moves on in turn
    assert list(scored.columns[:6]) == ["ticket", "text", "input_intent", "input_input_intent", "input_Error", "intent"]
    assert list(scored.iloc[0, 2:4]) == ["lost_card", "x"] and scored["input_Error"].iloc[1] == "e"
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # the output exists: one line, no traceback
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_bad_inputs_get_one_line_errors(spark, tmp_path):
    from bankintent.spark import read_queries, score_file

    (tmp_path / "logs.csv").write_text("ticket,body\na,i lost my card\n")
    with pytest.raises(DataError, match=r"logs.csv: missing column 'text' \(columns: ticket, body\)"):
        read_queries(spark, tmp_path / "logs.csv")
    with pytest.raises(DataError, match="unknown input format '.xml'"):
        score_file(tmp_path, tmp_path / "logs.xml", tmp_path / "out.parquet")
    (tmp_path / "logs.json").write_text('{"text": "i lost my card"}\n')  # refused as predict refuses it without Spark
    with pytest.raises(DataError, match="unknown input format '.json'; use .parquet, .csv, .tsv, .jsonl, .txt"):
        score_file(tmp_path, tmp_path / "logs.json", tmp_path / "out.parquet")
    (tmp_path / "logs.txt").write_text("i lost my card\n\nexchange rates\n")  # a query a line, as predict reads it without Spark
    lines = read_queries(spark, tmp_path / "logs.txt", "utterance").toPandas()  # text, whatever the run's column
    assert list(lines.columns) == ["text"] and list(lines["text"]) == ["i lost my card", "", "exchange rates"]
    with pytest.raises(DataError, match="writes Parquet"):
        score_file(tmp_path, tmp_path / "logs.csv", tmp_path / "out.csv")


def test_a_jsonl_input_keeps_its_column_order(spark, tmp_path):
    """Spark's JSON reader sorts columns by name; the output keeps them as the file writes them."""
    from bankintent.spark import read_queries

    (tmp_path / "logs.jsonl").write_text('{"ticket": "a", "text": "i lost my card", "channel": "app"}\n'
                                         '{"ticket": "b", "text": "rates", "channel": "web", "a.b": 1}\n')
    assert read_queries(spark, tmp_path / "logs.jsonl").columns == ["ticket", "text", "channel", "a.b"]


def test_a_sheet_s_escaped_texts_are_read_as_the_local_engine_reads_them(spark, tmp_path):
    """A .csv bankintent wrote (a labelling sheet, predictions) holds formula-like texts after an
    apostrophe; the local engine takes it off, and Spark scored "'=HYPERLINK(...)" instead."""
    from bankintent.data import iter_queries, write_sheet
    from bankintent.spark import read_queries

    texts = ['=HYPERLINK("http://evil.example","card")', "'sup, card gone", "-5", "- top up failed", "plain"]
    write_sheet(pd.DataFrame({"id": range(5), "text": texts}), tmp_path / "sheet.csv")
    assert read_queries(spark, tmp_path / "sheet.csv").toPandas()["text"].tolist() == texts
    assert [text for _, text in iter_queries(tmp_path / "sheet.csv")] == texts
    (tmp_path / "sheet.tsv").write_text("id\ttext\n1\tmy card, it is lost\n")  # refused as an unknown format, which the help lists
    assert read_queries(spark, tmp_path / "sheet.tsv").toPandas()["text"].tolist() == ["my card, it is lost"]


def test_spark_without_a_java_to_start_is_one_line(tiny_probe_run, tmp_path):
    import os

    (tmp_path / "logs.csv").write_text("text\ni lost my card\n")
    done = subprocess.run([sys.executable, "-m", "bankintent.cli", "predict", str(tiny_probe_run), "--input", str(tmp_path / "logs.csv"),
                           "--output", str(tmp_path / "out.parquet"), "--engine", "spark", "--master", "local[1]"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAVA_HOME": str(tmp_path / "no_java")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: Spark did not start (master local[1]): its Java process exited")


def test_a_failed_spark_job_is_said_by_its_cause_and_leaves_no_partial_folder(tmp_path):
    """An unreachable master ended in py4j's 200-line traceback, and a stopped job's _temporary folder
    refused the rerun as existing output."""
    from bankintent.spark import _remove_partial, spark_cause

    failed = Exception("An error occurred while calling o45.parquet.\n: java.lang.IllegalStateException: Cannot call methods on a "
                       "stopped SparkContext.\nThis stopped SparkContext was created at:\n\tat org.apache.spark.SparkContext")
    assert spark_cause(failed) == "java.lang.IllegalStateException: Cannot call methods on a stopped SparkContext."
    partial, done = tmp_path / "partial.parquet", tmp_path / "done.parquet"
    (partial / "_temporary").mkdir(parents=True)
    done.mkdir()
    (done / "_SUCCESS").touch()
    _remove_partial(partial)
    _remove_partial(done)
    assert not partial.exists() and (done / "_SUCCESS").is_file()


def test_ctrl_c_during_the_job_is_one_line_and_leaves_no_output(tiny_probe_run, tmp_path):
    """PySpark's own Ctrl-C handler cancelled the job from inside the py4j call the main thread waited in:
    five Python tracebacks and Spark's log of every aborted task buried the line saying what to do."""
    import signal
    import time

    pd.DataFrame({"text": ["i lost my card", "where is my new card"] * 300_000}).to_parquet(tmp_path / "logs.parquet")
    output = tmp_path / "scored.parquet"
    command = [sys.executable, "-m", "bankintent.cli", "predict", str(tiny_probe_run), "--input", str(tmp_path / "logs.parquet"),
               "--output", str(output), "--engine", "spark", "--master", "local[2]"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (output / "_temporary").exists():  # the job has started writing
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted: scored.parquet not written" in err.replace(str(tmp_path) + "/", "")
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]
    assert not output.exists()  # the partial folder removed: the same command runs again
