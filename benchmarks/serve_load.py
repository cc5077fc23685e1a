"""Load test of the HTTP service: starts ``bankintent serve DIR`` in its own process, drives it over
loopback from this one with 16 and 64 concurrent clients (each sends one Banking77 test query per
request and sends the next when the answer arrives), and prints one table: latency p50/p95/p99 and
requests/s of the requests answered, and errors, per concurrency level (a level none of whose requests
was answered stops the run with an error, not a row), and the CPU time each request cost the server (also by
thread) and the clients. The clients are aiohttp's (its HTTP parser is compiled): on a small machine the load
generator shares the cores with the service, and a client in pure Python (httpx) took about as much
CPU per request as the service itself.

    python benchmarks/serve_load.py runs/demo                       # 10,000 requests per level
    python benchmarks/serve_load.py runs/demo --clients 16 --requests 2000 --max-wait-ms 1
    python benchmarks/serve_load.py --models-dir runs --model demo  # one adapter of many on a shared base
    python benchmarks/serve_load.py --url http://127.0.0.1:8000     # a service already running
    python benchmarks/serve_load.py EXPORT --peer RUN --clients 1 16 64
    python benchmarks/serve_load.py EXPORT --workers 2 --clients 16 # two worker processes (CPU: all of them)

``--peer RUN`` also starts, after ours, the service a team would otherwise write by hand
(``benchmarks/peer_service.py``: FastAPI and a Hugging Face ``pipeline("text-classification")`` on
RUN's merged weights, no batching), drives it with the same clients and queries, and prints our
service's throughput and p50 as ratios to the peer's. RUN must be a run with the base model's own
classification head (``pooling: cls``); DIR may be RUN itself or its export.

``--floor`` also starts ``benchmarks/floor_service.py``: the same request body and answer with no
model behind it, driven the same way. Its latency is what the HTTP stack and the load generator cost
on this machine before any model runs: the floor under any model's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil
from tqdm.auto import tqdm

from bankintent.data import iter_queries, locate

FALLBACK_QUERIES = ["I lost my debit card", "my card has not arrived yet", "what exchange rate do you use?",
                    "why did my top-up fail", "how long does a transfer to Germany take"]


def queries(limit: int = 3080) -> list[str]:
    try:
        return [text for _, text in itertools.islice(iter_queries(locate("banking77") / "test.csv"), limit)]
    except Exception:  # no Banking77 here: a few fixed queries do
        return FALLBACK_QUERIES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def service(command: list[str]):
    """``COMMAND --port PORT`` (a service) in a child process; yields its URL and process once /readyz answers."""
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"the service did not start:\n{log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def client_for(url: str, clients: int) -> aiohttp.ClientSession:
    """An HTTP client keeping up to ``clients`` connections open."""
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=30))


async def request(client: aiohttp.ClientSession, body: dict, text: str, latencies: list, failures: collections.Counter) -> None:
    """One /v1/predict request of one text: its latency goes to ``latencies`` if it was answered (200
    with one prediction), else the failure (another answer, or none) to ``failures`` by kind: a refused
    connection's few microseconds are no latency of the service."""
    start = time.perf_counter()
    try:
        async with client.post("/v1/predict", json=body | {"texts": [text]}) as response:
            if response.status != 200 or len(await response.json()) != 1:
                failures[f"HTTP {response.status}"] += 1
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        failures[type(exc).__name__] += 1
        return
    latencies.append(time.perf_counter() - start)


async def drive(url: str, texts: list[str], clients: int, requests: int, model: str | None) -> dict:
    """``clients`` concurrent closed-loop clients sharing ``requests`` requests; latency of each."""
    latencies, failures = [], collections.Counter()
    counter = itertools.count()
    body = {"top_k": 3} | ({"model": model} if model else {})
    with tqdm(total=requests, desc=f"{clients} clients", unit="req", leave=False) as bar:
        async with client_for(url, clients) as client:

            async def one_client():
                while (i := next(counter)) < requests:
                    await request(client, body, texts[i % len(texts)], latencies, failures)
                    bar.update()

            start = time.perf_counter()
            await asyncio.gather(*(one_client() for _ in range(clients)))
            elapsed = time.perf_counter() - start
    if not latencies:
        raise SystemExit(f"error: none of the {requests} requests at {clients} clients was answered ({dict(failures)}); is the "
                         f"service at {url} up, and does it serve the model asked for?")
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "errors": sum(failures.values()), "error_kinds": dict(failures), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "requests_per_s": len(latencies) / elapsed}


def family(process: psutil.Process) -> list[psutil.Process]:
    """The process and its children (the worker processes of ``serve --workers N``)."""
    return [process, *process.children(recursive=True)]


def cpu_seconds(process: psutil.Process | None, children: bool = True) -> float:
    if process is None:
        return float("nan")
    return sum(sum(p.cpu_times()[:2]) for p in (family(process) if children else [process]))


def thread_seconds(process: psutil.Process | None) -> dict[int, float]:
    """CPU seconds of each thread of the process and its children, by thread id (native threads
    included: ONNX Runtime's and PyTorch's pools as well as Python's)."""
    if process is None:
        return {}
    return {thread.id: thread.user_time + thread.system_time for p in family(process) for thread in p.threads()}


def run(url: str, args, texts: list[str], server: psutil.Process | None = None) -> list[dict]:
    """One row per concurrency level; with the server's process at hand, its CPU time per request,
    in all and by thread (``main``: the event loop's; the others by their ids, busiest first)."""
    asyncio.run(drive(url, texts, max(args.clients), args.warmup, args.model))  # warm up: connections, allocator, caches
    rows = []
    for clients in args.clients:
        client = psutil.Process()
        server_before, client_before, threads_before = cpu_seconds(server), cpu_seconds(client, children=False), thread_seconds(server)
        row = asyncio.run(drive(url, texts, clients, args.requests, args.model))
        row["server_cpu_ms_per_request"] = (cpu_seconds(server) - server_before) * 1000 / args.requests
        row["client_cpu_ms_per_request"] = (cpu_seconds(client, children=False) - client_before) * 1000 / args.requests
        used = {("main" if tid == server.pid else str(tid)): (seconds - threads_before.get(tid, 0.0)) * 1000 / args.requests
                for tid, seconds in thread_seconds(server).items()}
        row["server_thread_cpu_ms_per_request"] = dict(sorted(((name, ms) for name, ms in used.items() if ms >= 0.01), key=lambda item: -item[1]))
        rows.append(row)
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print("| clients | requests | errors | p50 ms | p95 ms | p99 ms | requests/s | server CPU ms/req | client CPU ms/req |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['requests_per_s']:.0f} | {r['server_cpu_ms_per_request']:.2f} | {r['client_cpu_ms_per_request']:.2f} |")
    for r in rows:
        if r.get("server_thread_cpu_ms_per_request"):
            threads = ", ".join(f"{name} {ms:.2f}" for name, ms in r["server_thread_cpu_ms_per_request"].items())
            print(f"server CPU ms/req by thread at {r['clients']} clients = {threads}")
    for r in rows:
        if r["errors"]:
            print(f"errors with {r['clients']} clients: {r['error_kinds']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="runs/demo", help="model or run folder to serve")
    parser.add_argument("--url", help="drive a service that is already running instead")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--models-dir", help="serve this folder of model folders instead (adapters on one base); name one with --model")
    parser.add_argument("--model", help="the request's model field (with --models-dir services)")
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--max-wait-ms", type=float, default=None)
    parser.add_argument("--oos-score", help="serve with this out-of-scope score (bankintent serve --oos-score)")
    parser.add_argument("--workers", type=int, help="serve with this many worker processes (bankintent serve --workers)")
    parser.add_argument("--peer", metavar="RUN", help="also measure the hand-written peer service on RUN's merged weights")
    parser.add_argument("--floor", action="store_true", help="also measure the service with no model (floor_service.py)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = queries()
    options = (("--models-dir", args.models_dir), ("--max-batch", args.max_batch), ("--max-wait-ms", args.max_wait_ms),
               ("--oos-score", args.oos_score), ("--workers", args.workers))
    arguments = ([] if args.models_dir else [args.dir]) + [arg for name, value in options if value is not None for arg in (name, str(value))]
    if args.url:
        rows, where = run(args.url, args, texts), args.url
    else:
        with service([sys.executable, "-m", "bankintent.cli", "serve", *arguments]) as (url, server):
            rows, where = run(url, args, texts, server), f"bankintent serve {' '.join(arguments)}"
    peer = measure_peer(args, texts) if args.peer else None
    floor = measure_floor(args, texts) if args.floor else None
    if args.json:
        extra = {name: value for name, value in (("peer", peer), ("floor", floor)) if value}
        print(json.dumps({"service": rows, **extra} if extra else rows, indent=2))
        return
    load = os.getloadavg()[0]
    print_table(rows, f"{where}: {len(texts)} distinct queries, one per request, {os.cpu_count()} CPUs shared by server and clients "
                      f"(load average {load:.1f} at the end)")
    if peer:
        print_table(peer, f"\npeer: FastAPI + pipeline('text-classification') on the merged weights of {args.peer}")
        print("\n| clients | requests/s, ours / peer | p50, ours / peer |\n|--:|--:|--:|")
        for ours, theirs in zip(rows, peer):
            print(f"| {ours['clients']} | {ours['requests_per_s'] / theirs['requests_per_s']:.2f}x | "
                  f"{ours['p50_ms'] / theirs['p50_ms']:.2f}x |")
    if floor:
        print_table(floor, "\nfloor: FastAPI answering a fixed prediction, no model (floor_service.py)")
        print("\n| clients | p50, ours - floor (ms) | requests/s, ours / floor |\n|--:|--:|--:|")
        for ours, bare in zip(rows, floor):
            print(f"| {ours['clients']} | {ours['p50_ms'] - bare['p50_ms']:.2f} | {ours['requests_per_s'] / bare['requests_per_s']:.2f}x |")


def measure_peer(args, texts: list[str]) -> list[dict]:
    """The peer service (``peer_service.py``) on a merged export of ``args.peer``, driven as ours was."""
    from bankintent.export import export

    with tempfile.TemporaryDirectory() as folder:
        merged = export(args.peer, Path(folder) / "merged", format="merged")
        command = [sys.executable, str(Path(__file__).with_name("peer_service.py")), str(merged)]
        with service(command) as (url, server):
            return run(url, args, texts, server)


def measure_floor(args, texts: list[str]) -> list[dict]:
    """The service with no model (``floor_service.py``), driven as ours was."""
    with service([sys.executable, str(Path(__file__).with_name("floor_service.py"))]) as (url, server):
        return run(url, args, texts, server)


if __name__ == "__main__":
    main()
