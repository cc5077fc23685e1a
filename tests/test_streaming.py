"""Streaming prediction of a file: killed in the middle and resumed, it matches a single pass line by line."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from bankintent import Predictor, resolve_config, train
from bankintent.errors import DataError
from bankintent.predict import CPU_BATCH
from bankintent.streaming import predict_file
from conftest import INTENTS, tiny_options

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
def model_dir(tiny_bert, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream_model")
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, out)))
    return out


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
    assert predict_file(Predictor.load(model_dir, batch_size=BATCH), queries, output) == QUERIES
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


def test_resume_cuts_a_torn_last_line(model_dir, queries, single_pass, tmp_path):
    output = tmp_path / "out.jsonl"
    kept = 1234
    lines = [json.dumps(r) + "\n" for r in single_pass]
    output.write_text("".join(lines[:kept]) + lines[kept][:17])
    written = predict_file(Predictor.load(model_dir, batch_size=BATCH), queries, output, resume=True)
    assert written == QUERIES - kept
    assert_same_lines(output, single_pass)
    assert predict_file(Predictor.load(model_dir), queries, output, resume=True) == 0  # already complete


def test_resume_refuses_an_output_of_another_input(model_dir, queries, single_pass, tmp_path):
    predictor = Predictor.load(model_dir)
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({**single_pass[0], "text": "something else"}) + "\n")
    with pytest.raises(DataError, match=r"does not answer row 1 of .*queries.txt; not its output"):
        predict_file(predictor, queries, output, resume=True)
    output.write_text("not json\n")
    with pytest.raises(DataError, match="not its output"):
        predict_file(predictor, queries, output, resume=True)
    short = tmp_path / "short.txt"
    short.write_text("my card was stolen\n")
    output.write_text("".join(json.dumps(r) + "\n" for r in single_pass[:2]))
    with pytest.raises(DataError, match="holds 2 lines but .*short.txt has only 1 queries"):
        predict_file(predictor, short, output, resume=True)
    with pytest.raises(DataError, match="already exists; pass --resume"):
        predict_file(predictor, short, output)
    with pytest.raises(DataError, match="does not exist"):
        predict_file(predictor, short, tmp_path / "missing" / "out.jsonl")


def test_batches_are_sized_for_the_backend(model_dir):
    assert Predictor.load(model_dir, device="cpu").batch_size == CPU_BATCH
    assert Predictor.load(model_dir, device="cpu", batch_size=3).batch_size == 3
