"""Latency and throughput of `imgindex serve` under concurrent clients, per mode and index.

    python benchmarks/serve.py --index demo-out/run/index [--index /tmp/index_scale/auto]
        [--clients 1,4,16] [--modes hybrid,vector,keyword] [--seconds 8] [--max-requests 4000]

For each index it starts the real server (`imgindex serve PATH --port P`, uvicorn, one worker) as
a subprocess on 127.0.0.1, waits for /readyz, then for each mode and client count runs that many
client threads, each with one keep-alive HTTP connection, asking distinct caption-like queries
from the generated world (no query is repeated within a cell, so the service's query cache does
not help) until --seconds or --max-requests is reached. A last row per index repeats one query,
which the cache answers. Loopback only; every run is bounded in time and count.

The clients run on the same 2 cores as the server, so the numbers include their cost. Baseline,
measured in the same run: one `imgindex search` process per query (the way to search before the
service). clip-retrieval's published figures (about 50 ms per query, 20 queries/s, README of
rom1504/clip-retrieval) are printed beside ours; they were measured on other hardware.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import cpu_model  # this script's directory is on sys.path

from captioning.archives.synthetic.world import describe, sample_scene

HOST = "127.0.0.1"
CLIP_RETRIEVAL = "clip-retrieval (published): ~50 ms per query, ~20 queries/s"
GOAL_P99_MS, GOAL_QPS = 20.0, 200.0  # hybrid, 4 clients, demo index


@dataclass
class Cell:
    mode: str
    clients: int
    latencies_ms: list[float]
    seconds: float
    errors: int
    versions: set[str]

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def queries(n: int, seed: int) -> list[str]:
    """n distinct world captions and short phrases ("two green triangles"), seeded."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        caption, references = describe(sample_scene(rng), rng)
        for text in (caption, *references):
            seen.setdefault(text, None)
            words = text.split()
            seen.setdefault(" ".join(words[:3]), None)  # short queries too
    return list(seen)[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(index: Path, port: int) -> subprocess.Popen[bytes]:
    imgindex = Path(sys.executable).with_name("imgindex")
    command = [str(imgindex), "serve", str(index), "--host", HOST, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("server not ready after 180 s")


def run_cell(
    port: int, mode: str, clients: int, texts: list[str], args: argparse.Namespace
) -> Cell:
    cell = Cell(mode, clients, [], 0.0, 0, set())
    lock = threading.Lock()
    feed = iter(texts)
    stop_at = time.monotonic() + args.seconds

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while time.monotonic() < stop_at:
            with lock:
                if len(cell.latencies_ms) + cell.errors >= args.max_requests:
                    return
                text = next(feed, None)
            if text is None:
                return
            path = "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10, "mode": mode})
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            took = (time.perf_counter() - start) * 1000
            with lock:
                if response.status == 200:
                    cell.latencies_ms.append(took)
                    cell.versions.add(str(json.loads(body)["version"]))
                else:
                    cell.errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cell.seconds = time.perf_counter() - start
    return cell


def cli_baseline(index: Path, texts: list[str], runs: int) -> float:
    """Mean seconds of one `imgindex search` process per query."""
    imgindex = Path(sys.executable).with_name("imgindex")
    took = []
    for text in texts[:runs]:
        start = time.perf_counter()
        subprocess.run(
            [str(imgindex), "search", str(index), text, "-k", "10"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        took.append(time.perf_counter() - start)
    return sum(took) / len(took)


def bench_index(index: Path, args: argparse.Namespace) -> list[Cell]:
    port = free_port()
    server = start_server(index, port)
    try:
        texts = queries(args.max_requests * len(args.modes) * len(args.clients) + 100, args.seed)
        pool = iter(range(0, len(texts), args.max_requests))
        run_cell(
            port, "hybrid", 2, texts[-100:], argparse.Namespace(**{**vars(args), "seconds": 3})
        )
        cells = []
        for mode in args.modes:
            for clients in args.clients:
                first = next(pool)
                cell = run_cell(port, mode, clients, texts[first : first + args.max_requests], args)
                cells.append(cell)
                print(row(index, cell), flush=True)
        repeated = [texts[0]] * args.max_requests
        cell = run_cell(port, "hybrid", 4, repeated, args)
        cell.mode = "hybrid, one repeated query (cached)"
        cells.append(cell)
        print(row(index, cell), flush=True)
        return cells
    finally:
        server.terminate()
        server.wait(timeout=30)


def row(index: Path, c: Cell) -> str:
    return (
        f"| {index} | {c.mode} | {c.clients} | {len(c.latencies_ms)} | {c.errors} "
        f"| {c.pct(50):.1f} | {c.pct(99):.1f} | {c.qps:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, action="append", required=True)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--modes", default="hybrid,vector,keyword")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-requests", type=int, default=4000)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]

    header = "| index | mode | clients | requests | errors | p50 ms | p99 ms | queries/s |"
    print(header + "\n|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    results = {index: bench_index(index, args) for index in args.index}
    baseline = cli_baseline(args.index[0], queries(args.cli_runs, args.seed + 1), args.cli_runs)

    print(
        f"\n{datetime.date.today()} | {cpu_model()} | Python {sys.version.split()[0]}"
        f" | pid {os.getpid()}"
    )
    print(header + "\n|---|---|---:|---:|---:|---:|---:|---:|")
    for index, cells in results.items():
        for cell in cells:
            print(row(index, cell))
    print(
        f"\nBaseline (same run): one `imgindex search` process per query on {args.index[0]}: "
        f"{baseline * 1000:,.0f} ms per query, {1 / baseline:.2f} queries/s"
    )
    print(CLIP_RETRIEVAL)
    demo = next(c for c in results[args.index[0]] if c.mode == "hybrid" and c.clients == 4)
    met = demo.pct(99) <= GOAL_P99_MS and demo.qps >= GOAL_QPS
    print(
        f"Goal (hybrid, 4 clients, {args.index[0]}): p99 <= {GOAL_P99_MS:.0f} ms and >= "
        f"{GOAL_QPS:.0f} queries/s: {'met' if met else 'NOT met'} "
        f"(p99 {demo.pct(99):.1f} ms, {demo.qps:.0f} queries/s)"
    )


if __name__ == "__main__":
    main()
