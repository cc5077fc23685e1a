"""Soak test of the HTTP service: ``bankintent serve DIR`` in its own process, driven over loopback by
32 concurrent closed-loop clients for 60 s. Prints requests, errors, latency and the server's resident
memory (RSS) averaged over the first and the last 10 s, with the growth between them.

    python benchmarks/soak.py runs/demo                    # 60 s, 32 clients
    python benchmarks/soak.py runs/demo --seconds 20 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import client_for, queries, request, service  # noqa: E402


async def soak(url: str, server, texts: list[str], clients: int, seconds: float) -> dict:
    latencies, failures, rss = [], collections.Counter(), []
    counter = itertools.count()
    start = time.monotonic()
    end = start + seconds

    async def sample_memory():
        while time.monotonic() < end:
            rss.append((time.monotonic() - start, server.memory_info().rss))
            await asyncio.sleep(0.5)

    async with client_for(url, clients) as client:

        async def one_client():
            while time.monotonic() < end:
                await request(client, {"top_k": 3}, texts[next(counter) % len(texts)], latencies, failures)

        await asyncio.gather(sample_memory(), *(one_client() for _ in range(clients)))
    window = min(10.0, seconds / 3)
    first = np.mean([m for t, m in rss if t <= window]) / 2**20
    last = np.mean([m for t, m in rss if t >= seconds - window]) / 2**20
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": sum(failures.values()), "error_kinds": dict(failures),
            "requests_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "rss_first_mib": first, "rss_last_mib": last, "rss_growth_pct": 100 * (last - first) / first, "window_s": window}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="runs/demo")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = queries()
    with service([args.dir]) as (url, server):
        asyncio.run(soak(url, server, texts, args.clients, min(5.0, args.seconds)))  # warm up
        r = asyncio.run(soak(url, server, texts, args.clients, args.seconds))
    print(f"bankintent serve {args.dir}: {args.clients} clients for {args.seconds:.0f} s on loopback, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")
    print("| requests | errors | requests/s | p50 ms | p99 ms | RSS first {w:.0f} s MiB | RSS last {w:.0f} s MiB | RSS growth |".format(w=r["window_s"]))
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    print(f"| {r['requests']} | {r['errors']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
          f"{r['rss_first_mib']:.1f} | {r['rss_last_mib']:.1f} | {r['rss_growth_pct']:+.1f}% |")
    if r["errors"]:
        print(f"errors: {r['error_kinds']}")
    verdict = r["errors"] == 0 and r["rss_growth_pct"] < 10
    print("PASS: 0 errors, RSS growth under 10%" if verdict else "FAIL: errors or RSS growth of 10% or more")
    raise SystemExit(0 if verdict else 1)


if __name__ == "__main__":
    main()
