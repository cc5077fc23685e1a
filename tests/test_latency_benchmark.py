"""``benchmarks/latency.py`` times full batches of 64 even when asked for more than the test split holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

LATENCY = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


def test_more_batches_than_the_split_holds_reuse_its_queries(monkeypatch):
    spec = importlib.util.spec_from_file_location("latency_benchmark", LATENCY)
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    monkeypatch.setattr(latency, "SETTLE_SECONDS", 0.0)
    sizes: list[int] = []
    texts = [f"query {i}" for i in range(100)]
    results = latency.measure({"model": lambda batch: sizes.append(len(batch))}, texts, queries=6, batches=4, rounds=2)
    timed_batches = [n for n in sizes if n > 1]
    assert timed_batches == [latency.BATCH] * 4  # 4 x 64 > 100 queries: every timed batch is still full
    assert sizes.count(1) == 2 * latency.WARMUP + 6  # warm-up per round, then the single queries split across rounds
    assert results["model"]["throughput_qps"] > 0
