"""``benchmarks/latency.py`` times full batches of 64 even when asked for more than the test split holds, and
reuses an export in ``--export-dir`` only where it is one of the model measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

LATENCY = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("latency_benchmark", LATENCY)
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    return latency


def test_more_batches_than_the_split_holds_reuse_its_queries(monkeypatch):
    latency = load_benchmark()
    monkeypatch.setattr(latency, "SETTLE_SECONDS", 0.0)
    sizes: list[int] = []
    texts = [f"query {i}" for i in range(100)]
    results = latency.measure({"model": lambda batch: sizes.append(len(batch))}, texts, queries=6, batches=4, rounds=2)
    timed_batches = [n for n in sizes if n > 1]
    assert timed_batches == [latency.BATCH] * 4  # 4 x 64 > 100 queries: every timed batch is still full
    assert sizes.count(1) == 2 * latency.WARMUP + 6  # warm-up per round, then the single queries split across rounds
    assert results["model"]["throughput_qps"] > 0


def test_an_export_of_another_model_in_the_export_dir_stops_the_run(tmp_path):
    latency = load_benchmark()
    model, other, target = tmp_path / "model", tmp_path / "other", tmp_path / "exports" / "onnx-int8"
    for folder in (model, other, target):
        folder.mkdir(parents=True)
    assert not latency.reusable(target, model)  # nothing finished there: export
    (target / "COMPLETE").touch()
    (target / "export.json").write_text(json.dumps({"source": str(model)}))
    assert latency.reusable(target, model)
    (target / "export.json").write_text(json.dumps({"source": str(other)}))
    with pytest.raises(SystemExit, match=f"holds an export of {other}, not of {model}; pass another --export-dir"):
        latency.reusable(target, model)


def test_the_queries_timed_are_the_run_s_own_test_split_or_a_file_given(tiny_probe_run, tiny_data, tmp_path):
    """A run trained on one's own intents is timed on its own test queries, not Banking77's; a labelled
    file is read as the test queries (it was read as training data, and the run stopped on its missing test split)."""
    latency = load_benchmark()
    test, source = latency.test_queries(tiny_probe_run, None)
    assert source == f"{tiny_data} (its test split)" and len(test) == 20
    heldout = tmp_path / "heldout.csv"
    heldout.write_text("text,category\nmy card was stolen,lost_or_stolen_card\nwhat's the weather,out_of_scope\n")
    test, source = latency.test_queries(tiny_probe_run, str(heldout))
    assert (test.texts, source) == (["my card was stolen"], str(heldout))  # out-of-scope rows left out
    (tmp_path / "only_train").mkdir()
    (tmp_path / "only_train" / "train.csv").write_text((tiny_data / "train.csv").read_text())
    with pytest.raises(latency.BankintentError, match="only_train: no test split to time and score on; give --data FILE"):
        latency.test_queries(tiny_probe_run, str(tmp_path / "only_train"))
