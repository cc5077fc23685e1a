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
