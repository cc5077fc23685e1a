"""Streaming prediction of a file: killed in the middle and resumed, it matches a single pass line by line;
empty rows skipped and counted; row numbers, kept input columns and output formats alike for every input."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from bankintent import Predictor
from bankintent.errors import ConfigError, DataError
from bankintent.predict import CPU_BATCH
from bankintent.streaming import predict_file
from conftest import INTENTS

QUERIES = 4000
BATCH = 2  # small batches: many chunks, so the kill lands in the middle
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny batches on a busy 2-core machine: threads only contend


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tiny_probe_run):
    return tiny_probe_run


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    rng = random.Random(3)
    phrases = [p for ps in INTENTS.values() for p in ps]
    path = tmp_path_factory.mktemp("stream_input") / "queries.txt"
    path.write_text("".join(f"{rng.choice(['', 'hi ', 'please '])}{rng.choice(phrases)} {i}\n" for i in range(QUERIES)))
    return path


@pytest.fixture(scope="module")
def single_pass(model_dir, queries, tmp_path_factory):
    output = tmp_path_factory.mktemp("stream_single") / "single.jsonl"
    assert predict_file(Predictor.load(model_dir, batch_size=BATCH), queries, output).written == QUERIES
    return [json.loads(line) for line in output.read_text().splitlines()]


def assert_same_lines(path, expected):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected):
        assert (got["row"], got["text"], got["intent"]) == (want["row"], want["text"], want["intent"])
        assert [t["intent"] for t in got["top_k"]] == [t["intent"] for t in want["top_k"]]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)  # batches differ after a resume


def count_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_single_pass_is_in_input_order(single_pass, queries):
    texts = queries.read_text().splitlines()
    assert [r["row"] for r in single_pass] == list(range(1, QUERIES + 1))
    assert [r["text"] for r in single_pass] == [t.strip() for t in texts]
    assert {r["top_k"][0]["intent"] for r in single_pass} <= set(INTENTS)


def test_killed_run_resumes_without_duplicates_or_gaps(model_dir, queries, single_pass, tmp_path):
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "bankintent.cli", "predict", str(model_dir), "--input", str(queries),
               "--output", str(output), "--batch-size", str(BATCH)]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.monotonic() + 120
    while count_lines(output) == 0 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    killed_at = count_lines(output)
    assert 0 < killed_at < QUERIES, "the kill must land in the middle of the file"

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{QUERIES - killed_at} predictions written" in resumed.stdout
    assert f"{QUERIES}/{QUERIES}" in resumed.stderr and "q/s" in resumed.stderr  # progress bar: count, rate
    assert_same_lines(output, single_pass)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_ctrl_c_says_what_is_kept_and_how_to_go_on(model_dir, queries, tmp_path, suffix):
    """Ctrl-C: a .jsonl output keeps its answers and says to --resume; a .csv one, written once complete,
    says that nothing was written and which format resumes."""
    output = tmp_path / f"out{suffix}"
    command = [sys.executable, "-m", "bankintent.cli", "predict", str(model_dir), "--input", str(queries),
               "--output", str(output), "--batch-size", str(BATCH)]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    started = output if suffix == ".jsonl" else output.with_name(output.name + ".part")
    deadline = time.monotonic() + 120
    while count_lines(started) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    said = err.strip().splitlines()[-1]
    if suffix == ".jsonl":
        kept = count_lines(output)
        assert kept > 0 and said == f"interrupted: {kept:,} answers so far are kept in {output}; continue with the same command and --resume"
    else:
        assert said.startswith("interrupted: nothing written (a .csv output is written once complete; a .jsonl")
        assert not output.exists() and not started.exists()


def test_the_interrupted_note_follows_the_output_format():
    from bankintent.streaming import interrupted_note

    assert interrupted_note("-") == "interrupted: the answers so far were written to stdout"  # not "nothing written"
    assert interrupted_note("OUT.JSONL").startswith("interrupted: the answers so far are kept")  # any case of the suffix
    assert interrupted_note("out.jsonl", kept=0) == "interrupted before the first answers were written: nothing to continue; run the same command again"
    assert interrupted_note("out.parquet").startswith("interrupted: nothing written (a .parquet output")


def test_resume_cuts_a_torn_last_line(model_dir, queries, single_pass, tmp_path):
    output = tmp_path / "out.jsonl"
    kept = 1234
    lines = [json.dumps(r) + "\n" for r in single_pass]
    output.write_text("".join(lines[:kept]) + lines[kept][:17])
    written, _ = predict_file(Predictor.load(model_dir, batch_size=BATCH), queries, output, resume=True)
    assert written == QUERIES - kept
    assert_same_lines(output, single_pass)
    assert predict_file(Predictor.load(model_dir), queries, output, resume=True).written == 0  # already complete


def test_resume_refuses_an_output_of_another_input(model_dir, queries, single_pass, tmp_path):
    predictor = Predictor.load(model_dir)
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({**single_pass[0], "text": "something else"}) + "\n")
    with pytest.raises(DataError, match=r"does not answer row 1 of .*queries.txt; not its output"):
        predict_file(predictor, queries, output, resume=True)
    output.write_text('{"a": 1}\nnot json\n{"a": 2}')  # another file named by mistake: refused, and left as it was
    with pytest.raises(DataError, match="not its output"):
        predict_file(predictor, queries, output, resume=True)
    assert output.read_text() == '{"a": 1}\nnot json\n{"a": 2}'
    logs = tmp_path / "logs.jsonl"  # the output named as the input: --overwrite removed it, --resume cut its last line
    logs.write_text('{"text": "my card was stolen"}\n{"text": "exchange rates"}')
    for options in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(DataError, match="logs.jsonl: is the input file; write the predictions to another file"):
            predict_file(predictor, logs, logs, **options)
    assert logs.read_text() == '{"text": "my card was stolen"}\n{"text": "exchange rates"}'
    short = tmp_path / "short.txt"
    short.write_text("my card was stolen\n")
    output.write_text("".join(json.dumps(r) + "\n" for r in single_pass[:2]))
    with pytest.raises(DataError, match="holds 2 lines but .*short.txt has only 1 queries"):
        predict_file(predictor, short, output, resume=True)
    with pytest.raises(DataError, match="already exists; pass --resume to continue it or --overwrite to replace it"):
        predict_file(predictor, short, output)
    assert predict_file(predictor, short, output, overwrite=True).written == 1  # the two lines before are gone, not appended to
    assert [json.loads(line)["text"] for line in output.read_text().splitlines()] == ["my card was stolen"]
    with pytest.raises(DataError, match="give one of them"):
        predict_file(predictor, short, output, resume=True, overwrite=True)
    assert predict_file(predictor, short, tmp_path / "new" / "folder" / "out.jsonl").written == 1  # the folder made, as train's --output is
    assert (tmp_path / "new" / "folder" / "out.jsonl").read_text().count("\n") == 1
    with pytest.raises(ConfigError, match=r"out.jsonl is a file, not a folder; choose another --output"):
        predict_file(predictor, short, output / "out.jsonl")


def test_resume_refuses_to_continue_with_another_model_or_other_options(model_dir, queries, single_pass, tmp_path):
    """A file continued with other options held two kinds of answers (3 then 5 top intents, two
    out-of-scope thresholds): its last query is answered again, and must be answered alike."""
    output = tmp_path / "out.jsonl"
    output.write_text("".join(json.dumps(r) + "\n" for r in single_pass[:50]))
    with pytest.raises(DataError, match=r"out.jsonl: its answers were made with another model or other options \(its last query, "
                                        r"answered again: top_k 3 -> 4\); continue it with the model and options it was started with"):
        predict_file(Predictor.load(model_dir), queries, output, top_k=4, resume=True)
    with pytest.raises(DataError, match=r"answered again: .*oos_threshold .* -> 0\.5\)"):
        predict_file(Predictor.load(model_dir, oos_threshold=0.5), queries, output, resume=True)
    assert len(output.read_text().splitlines()) == 50  # nothing added
    assert predict_file(Predictor.load(model_dir, batch_size=BATCH), queries, output, resume=True).written == QUERIES - 50
    assert_same_lines(output, single_pass)


def test_batches_are_sized_for_the_backend(model_dir):
    assert Predictor.load(model_dir, device="cpu").batch_size == CPU_BATCH
    assert Predictor.load(model_dir, device="cpu", batch_size=3).batch_size == 3


# the same queries in the four input formats, with an id column and empty rows; row n is the n-th data row
ROWS = [("a1", "my card was stolen"), ("a2", ""), ("a3", "where is my new card"), ("a4", "   "), ("a5", "top up failed")]
EXPECTED_ROWS = [1, 3, 5]


def write_inputs(folder):
    txt = folder / "q.txt"
    txt.write_text("".join(f"{text}\n" for _, text in ROWS))
    csv_path = folder / "q.csv"
    csv_path.write_text("id,text\n" + "".join(f"{i},{text}\n" for i, text in ROWS))
    jsonl = folder / "q.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": text, "intent": "gold"}) + "\n" for i, text in ROWS))
    return txt, csv_path, jsonl


def write_parquet(folder, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "q.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def read_output(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        import csv

        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_input_format_gives_the_same_rows_in_every_output_format(model_dir, tmp_path, suffix, caplog):
    predictor = Predictor.load(model_dir)
    txt, csv_input, jsonl = write_inputs(tmp_path)
    parquet = write_parquet(tmp_path, id=[i for i, _ in ROWS], text=[t for _, t in ROWS], intent=["gold"] * len(ROWS))
    outputs = {}
    for source in (txt, csv_input, jsonl, parquet):
        out = tmp_path / f"{source.suffix[1:]}_out{suffix}"
        assert predict_file(predictor, source, out) == (3, [2, 4])
        assert f"{source.name}: 2 empty row(s) skipped (rows 2, 4)" in caplog.text
        outputs[source.suffix] = read_output(out)
        assert not list(tmp_path.glob("*.part"))
    for rows in outputs.values():
        assert [int(r["row"]) for r in rows] == EXPECTED_ROWS
        assert [r["text"] for r in rows] == ["my card was stolen", "where is my new card", "top up failed"]
        assert {r["intent"] for r in rows} <= {*INTENTS, "out_of_scope"}
    assert "id" not in outputs[".txt"][0]
    assert [r["id"] for r in outputs[".csv"]] == [r["id"] for r in outputs[".jsonl"]] == [r["id"] for r in outputs[".parquet"]] \
        == ["a1", "a3", "a5"]
    # the input's own "intent" column is kept beside the prediction's, renamed
    assert [r["input_intent"] for r in outputs[".jsonl"]] == [r["input_intent"] for r in outputs[".parquet"]] == ["gold"] * 3
    first = outputs[".jsonl"][0]
    if suffix == ".csv":
        assert list(first)[:4] == ["row", "id", "input_intent", "text"]
        assert first["top1_intent"] == first["closest_intent"] and float(first["top1_confidence"]) > 0
    else:
        assert first["top_k"][0]["intent"] == first["closest_intent"]
        assert (first["confidence"] is None) == first["out_of_scope"]


def test_queries_from_standard_input_and_the_last_line_restates_the_skipped_rows(model_dir, tmp_path):
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "bankintent.cli", "predict", str(model_dir), "--input", "-", "--output", str(out)]
    run = subprocess.run(command, input="".join(f"{text}\n" for _, text in ROWS), capture_output=True, text=True,
                         timeout=300, env=ONE_THREAD)
    assert run.returncode == 0, run.stderr
    assert [(int(r["row"]), r["text"]) for r in read_output(out)] == [(1, "my card was stolen"), (3, "where is my new card"),
                                                                       (5, "top up failed")]
    assert run.stdout.splitlines()[-1] == f"3 predictions written to {out}; 2 empty row(s) skipped (rows 2, 4)"
    assert "standard input: 2 empty row(s) skipped (rows 2, 4)" in run.stderr  # not the temporary copy's name
    windows = subprocess.run([*command, "--overwrite"], input="caf\xe9 card\n".encode("cp1252"), capture_output=True, timeout=300,
                             env=ONE_THREAD)  # warned of as read: its encoding
    assert windows.returncode == 0 and b"standard input: not UTF-8" in windows.stderr and b"stdin.txt" not in windows.stderr
    empty = subprocess.run([*command, "--overwrite"], input="\n \n", capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert (empty.returncode, empty.stderr.strip().splitlines()[-1]) == (2, "error: standard input: no queries")


def test_a_csv_output_shows_formulas_as_text(model_dir, tmp_path):
    """A customer's query '=HYPERLINK(...)' in a .csv of predictions ran as a formula when an analyst
    opened it in a spreadsheet: it is written after an apostrophe; numbers and the .jsonl are as given."""
    source = tmp_path / "q.csv"
    source.write_text('id,text\n-5,"=HYPERLINK(""http://evil.example"",""card"")"\n7,+44 7700 900123 is my new number\n8,@SUM(A1)\n')
    predictor = Predictor.load(model_dir)
    predict_file(predictor, source, tmp_path / "out.csv")
    rows = read_output(tmp_path / "out.csv")
    assert [r["text"] for r in rows] == ["'=HYPERLINK(\"http://evil.example\",\"card\")", "'+44 7700 900123 is my new number", "'@SUM(A1)"]
    assert [r["id"] for r in rows] == ["-5", "7", "8"]
    predict_file(predictor, source, tmp_path / "out.jsonl")
    assert read_output(tmp_path / "out.jsonl")[0]["text"] == '=HYPERLINK("http://evil.example","card")'


def test_parquet_keeps_the_input_columns_types(model_dir, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": 1, "score": 0.5, "flag": true, "text": "my card was stolen"}\n'
                    '{"id": 2, "score": 1, "flag": false, "meta": {"a": 1}, "text": "top up failed"}\n')
    out = tmp_path / "out.parquet"
    predict_file(Predictor.load(model_dir), path, out)
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert [str(table.schema.field(name).type) for name in ("row", "id", "score", "flag", "meta", "confidence")] == \
        ["int64", "int64", "double", "bool", "string", "double"]
    assert table.column("meta").to_pylist() == [None, '{"a": 1}']


def test_a_whole_number_past_int64_is_kept_as_text_in_parquet(model_dir, tmp_path):
    path = tmp_path / "q.jsonl"  # an unsigned 64-bit id: the Parquet writer overflowed after every query was predicted
    path.write_text('{"id": 18446744073709551615, "text": "my card was stolen"}\n{"id": 2, "text": "top up failed"}\n')
    predict_file(Predictor.load(model_dir), path, tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["18446744073709551615", "2"]


def test_a_csv_output_keeps_an_input_column_named_like_a_top_k_column(model_dir, tmp_path, capfd, monkeypatch):
    source = tmp_path / "q.csv"  # a person's own label in top1_intent was written over by the top answer
    source.write_text("id,text,top1_intent,Intent\n1,my card was stolen,human_label,Lost Card\n")
    monkeypatch.setattr("bankintent.streaming.SCAN_BAR_BYTES", 0)
    predict_file(Predictor.load(model_dir), source, tmp_path / "out.csv", top_k=2)
    row = read_output(tmp_path / "out.csv")[0]
    assert row["input_top1_intent"] == "human_label" and row["top1_intent"] in INTENTS and row["top2_intent"] in INTENTS
    assert row["input_Intent"] == "Lost Card" and "Intent" not in row  # beside intent, one column to Excel or SQL
    assert "checking the input: " in capfd.readouterr().err  # the first read, shown where it takes seconds


def test_a_parquet_input_s_timestamps_and_decimals_are_kept_as_text_in_every_output(model_dir, tmp_path):
    import datetime
    import decimal

    import pyarrow as pa

    when = datetime.datetime(2026, 11, 30, 9, 15, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    source = write_parquet(tmp_path, at=pa.array([when, None], pa.timestamp("us", tz="+01:00")),
                           amount=pa.array([decimal.Decimal("12.50"), None], pa.decimal128(6, 2)),
                           tags=[["card"], []], text=["my card was stolen", None])
    predictor = Predictor.load(model_dir)
    for suffix in (".jsonl", ".csv", ".parquet"):
        assert predict_file(predictor, source, tmp_path / f"out{suffix}").written == 1
        row = read_output(tmp_path / f"out{suffix}")[0]
        assert (row["at"], row["amount"]) == ("2026-11-30T09:15:00+01:00", "12.50")
        assert row["tags"] in (["card"], '["card"]')  # a list in JSON, its JSON text in a CSV or Parquet cell


def test_a_bad_parquet_input_is_named_in_one_line(model_dir, tmp_path):
    predictor = Predictor.load(model_dir)
    write_parquet(tmp_path, message=["hello"])
    with pytest.raises(DataError, match=r"q.parquet: missing column 'text' \(columns: 'message'\); name the column to read with --text-column"):
        predict_file(predictor, tmp_path / "q.parquet", tmp_path / "out.jsonl")
    write_parquet(tmp_path, text=[7, 8])  # a column of ids named text
    with pytest.raises(DataError, match=r"q.parquet: row 1: expected text in column 'text', got int$"):
        predict_file(predictor, tmp_path / "q.parquet", tmp_path / "out.jsonl")
    (tmp_path / "q.parquet").write_text("text\nhello\n")  # a CSV saved under the wrong name
    with pytest.raises(DataError, match=r"q.parquet: not a readable Parquet file \("):
        predict_file(predictor, tmp_path / "q.parquet", tmp_path / "out.jsonl")


def test_output_to_stdout(model_dir, tmp_path, capsys):
    txt, _, _ = write_inputs(tmp_path)
    assert predict_file(Predictor.load(model_dir), txt, "-").written == 3
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["row"] for line in lines] == EXPECTED_ROWS
    (tmp_path / "accents.txt").write_text("transferência falhou\n")  # written as read, as --json and the service write it
    predict_file(Predictor.load(model_dir), tmp_path / "accents.txt", tmp_path / "accents.jsonl")
    assert '"text": "transferência falhou"' in (tmp_path / "accents.jsonl").read_text(encoding="utf-8")


def never_loaded():
    raise AssertionError("the model was loaded before the input and output were checked")


def test_bad_outputs_fail_before_the_model_loads(tmp_path, monkeypatch):
    txt, csv_input, _ = write_inputs(tmp_path)
    with pytest.raises(DataError, match=r"out.xlsx: unknown output format '.xlsx'; use .jsonl, .csv, .parquet, or -"):
        predict_file(never_loaded, txt, tmp_path / "out.xlsx")
    (tmp_path / "out.csv").write_text("row\n")
    with pytest.raises(DataError, match=r"out.csv: --resume continues .jsonl output only"):
        predict_file(never_loaded, txt, tmp_path / "out.csv", resume=True)
    with pytest.raises(DataError, match=r"out.csv: already exists; pass --overwrite to replace it"):
        predict_file(never_loaded, txt, tmp_path / "out.csv")
    with pytest.raises(DataError, match="cannot continue stdout"):
        predict_file(never_loaded, txt, "-", resume=True)
    (tmp_path / "kernel.jsonl").symlink_to("/proc/self/status")
    with pytest.raises(DataError, match=r"kernel.jsonl: is a symbolic link \(to /proc/self/status\); name the file itself"):
        predict_file(never_loaded, txt, tmp_path / "kernel.jsonl", resume=True)
    (tmp_path / "loop.jsonl").symlink_to("loop.jsonl")  # a loop: no path to resolve it to
    with pytest.raises(DataError, match=r"loop.jsonl: is a symbolic link \(to loop.jsonl\)"):
        predict_file(never_loaded, txt, tmp_path / "loop.jsonl")
    (tmp_path / "planted.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # dangling: the answers would have made it
    with pytest.raises(DataError, match=r"planted.jsonl: is a symbolic link"):
        predict_file(never_loaded, txt, tmp_path / "planted.jsonl")
    assert not (tmp_path / "elsewhere.jsonl").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty.txt: no queries"):
        predict_file(never_loaded, empty, tmp_path / "out.jsonl")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(DataError, match=r"out.parquet: writing .parquet needs pyarrow"):
        predict_file(never_loaded, txt, tmp_path / "out.parquet")


def test_a_link_planted_as_the_part_file_is_replaced_not_written_through(model_dir, tmp_path):
    txt, _, _ = write_inputs(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for suffix in (".csv", ".parquet"):
        (tmp_path / f"out{suffix}.part").symlink_to(victim)
        assert predict_file(Predictor.load(model_dir), txt, tmp_path / f"out{suffix}").written == 3
        assert victim.read_text() == "keep me\n" and not (tmp_path / f"out{suffix}").is_symlink()
    assert [int(r["row"]) for r in read_output(tmp_path / "out.csv")] == EXPECTED_ROWS


def test_a_failed_csv_run_leaves_no_file(model_dir, tmp_path, monkeypatch):
    """A .csv is written as .part and renamed when complete: a run that dies leaves nothing that looks whole."""
    predictor = Predictor.load(model_dir)
    calls = []

    def failing(texts, top_k=3):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Predictor.predict(predictor, texts, top_k=top_k)

    monkeypatch.setattr(predictor, "predict", failing)
    monkeypatch.setattr("bankintent.streaming.CHUNK", 1)
    txt, _, _ = write_inputs(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        predict_file(predictor, txt, tmp_path / "out.csv")
    assert calls == [1, 1] and list(tmp_path.glob("out*")) == []


def test_a_chunk_is_sized_to_take_seconds_so_the_bar_moves_on_a_slow_model():
    """A 20,000-row file on the PyTorch model (about 30 queries/s) moved its bar minutes apart when
    chunks doubled to 4,096; a chunk is now what the model answers in CHUNK_SECONDS, within bounds."""
    from bankintent.streaming import CHUNK, CHUNK_SECONDS, FIRST_CHUNK, next_chunk

    assert abs(next_chunk(256, 256 / 30) - 30 * CHUNK_SECONDS) <= 1  # 30 queries/s: 300 a chunk, 10 s apart
    assert next_chunk(256, 0.1) == CHUNK and next_chunk(256, 1000.0) == FIRST_CHUNK


def test_a_query_longer_than_max_length_is_said_once(model_dir, caplog):
    """The model reads max_length tokens, as it trained; a pasted e-mail was cut without a word.
    Said once a predictor (a service answers many such queries), without the query's text (a service's
    log would keep what customers wrote)."""
    predictor = Predictor.load(model_dir)
    email = "my card was stolen " + "and I need a new one " * predictor.spec.max_length
    with caplog.at_level("WARNING", logger="bankintent.predict"):
        predictor.predict(["where is my card", "my card was stolen"])
        assert not caplog.records  # short queries: nothing to say
        predictor.predict(["where is my card", email])
        predictor.predict([email, email])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"queries longer than the model's max_length of {predictor.spec.max_length} tokens are "
                                                 f"read to their first {predictor.spec.max_length}")
    assert said[0].endswith("(--max-length sets it): 1 of 2 in this batch (said once)") and "stolen" not in said[0]
