"""Payload log at 10,000 requests/s for 60 s, sample rate 1.0: how many records are dropped?

The data plane (`mlp.serving`: iris LogisticRegression, canary 90/10 over two loaded
versions, micro-batching, metrics, payload log at sample rate 1.0 on every request) runs
in its own process, served exactly as `mlp up` serves it (`mlp.serving.server.serve`).
The load is `wrk` (`apt-get install wrk`; C, one thread, `--conns` keep-alive connections),
paced at `--rate` requests/s by a Lua `delay()` schedule (`benchmarks/serve.py`'s
`_WRK_PACE`: Debian's wrk has no -R and wrk2 is not packaged); `--rate 0` runs it closed
loop instead, every connection back to back, to find the rate the server saturates at.
The rate reported is the one achieved (wrk's requests / wrk's measured duration), not the
target. (A Python load generator needs about as much CPU as the server on a 2-core machine.)

Two configurations, interleaved when `--rounds` > 1:

  current   the payload log as shipped (per-version queue bound 200,000, early drain)
  baseline  the same code with the previous bound (10,000 records per version)

For each: requests and non-2xx (wrk's counts), latency percentiles (from each request's
send), the server's CPU time (utime + stime from /proc, all threads) over the measured window
per request and as a share of one core, `mlp_payload_log_dropped_total` read from the
server's /metrics after the run, and the rows found in the Parquet files after a clean
shutdown (the log flushes on exit), which must equal every 200 the server sent
(`mlp_model_requests_total{code="200"}`, warm-up included).

    .venv/bin/python benchmarks/payload_log.py --only current            # 10,000/s for 60 s
    .venv/bin/python benchmarks/payload_log.py                           # both configurations
    .venv/bin/python benchmarks/payload_log.py --rate 0 --duration 10    # closed loop: saturation
    .venv/bin/python benchmarks/payload_log.py --component   # the log alone, paced, beside a GIL-bound thread

`--component` measures the payload log by itself, in one process: a thread paces `put()` at
`--rate` per second while another thread runs pure-Python work the whole time (standing in
for the event loop that competes with the writer for the GIL), for the same two bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as bench

CONFIGS = {"current": 200_000, "baseline": 10_000}


def _serve(port: int, model_dir: str, state: str, max_queue: int) -> None:
    from mlp.serving.app import DataPlane
    from mlp.serving.artifacts import sha256_file
    from mlp.serving.runtime import Runtime
    from mlp.serving.server import bind, serve
    from mlp.serving.testing import deployment, route

    m1, m2 = Path(model_dir) / "1" / "model.joblib", Path(model_dir) / "2" / "model.joblib"
    rt = Runtime(state, payload_log=True)
    assert rt.payloads is not None
    rt.payloads.max_queue = max_queue
    rt.apply(
        deployment(
            "iris",
            [route(1, m1, sha256_file(m1), "stable", 90), route(2, m2, sha256_file(m2), "canary", 10)],
            payload_rate=1.0,
            batching={"maxBatchSize": 32, "maxLatencyMs": 1.0},
        )
    )
    try:
        serve(DataPlane(rt), bind("127.0.0.1", port))
    finally:
        rt.close()


def _metric(port: int, name: str, **labels: str) -> float:
    """The sum of a sample over the series whose labels match `labels`, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet") if not p.name.startswith("."))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    config: str, model_dir: Path, body: bytes, rate: float, duration: float, conns: int, warmup: float = 2.0
) -> dict[str, Any]:
    port = bench._free_port()
    state = Path(tempfile.mkdtemp(prefix="mlp-bench-payload-"))
    proc = subprocess.Popen(
        [sys.executable, __file__, "_serve", str(port), str(model_dir), str(state), str(CONFIGS[config])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = "/v1/models/iris:predict"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        # a warm-up run first (its requests are logged too, and counted in "answered"), then
        # the measured window, with the server's CPU time around it
        bench.wrk_run(port, path, body, conns, warmup, rate=rate)
        cpu0 = _cpu_seconds(proc.pid)
        result = bench.wrk_run(port, path, body, conns, duration, rate=rate)
        assert result is not None
        cpu = _cpu_seconds(proc.pid) - cpu0
        result["errors"] = sum(result[k] for k in ("non_2xx", "connect_errors", "read_errors", "write_errors"))
        result["errors"] += result["timeouts"]
        result["server_cpu_us_per_request"] = cpu / max(1, result["requests"]) * 1e6
        result["server_cpu_share"] = cpu / (result["duration_us"] / 1e6)
        result["dropped"] = _metric(port, "mlp_payload_log_dropped_total")
        result["answered_200"] = _metric(port, "mlp_model_requests_total", model="iris", code="200")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        result["rows"] = _rows(state / "payloads")
        result["config"] = config
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def component(config: str, rate: float, duration: float) -> dict[str, Any]:
    import threading

    import numpy as np

    from mlp.serving.payload_log import PayloadLog

    names = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    with tempfile.TemporaryDirectory() as tmp:
        log = PayloadLog(tmp, max_queue=CONFIGS[config])
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                sum(range(10_000))

        competitor = threading.Thread(target=busy, daemon=True)
        competitor.start()
        x, y = np.ones((1, 4)), np.ones(1)
        sent = 0
        start = time.perf_counter()
        late = 0.0
        while (now := time.perf_counter() - start) < duration:
            due = int(now * rate)
            late = max(late, (due - sent) / rate)
            while sent < due:
                log.put("iris", "1", x, y, names, ("species",))
                sent += 1
            time.sleep(0.001)
        stop.set()
        log.flush(timeout=60)
        log.close()
        return {
            "config": config,
            "sent": sent,
            "rate": sent / duration,
            "dropped": log.dropped,
            "rows": log.written_rows,
            "max_lag_s": late,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000, help="requests/s (0: closed loop, as fast as it answers)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--conns", type=int, default=64, help="wrk connections")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    ap.add_argument("--component", action="store_true", help="measure the payload log alone (see above)")
    args = ap.parse_args()
    if args.component:
        print(
            f"\npayload log alone: put() paced at {args.rate:,.0f}/s for {args.duration:.0f} s beside a GIL-bound thread\n"
        )
        print("| config | queue bound | records put | per second | dropped | rows written |")
        print("|---|---:|---:|---:|---:|---:|")
        for _ in range(args.rounds):
            for config in args.only:
                r = component(config, args.rate, args.duration)
                print(
                    f"| {config} | {CONFIGS[config]:,} | {r['sent']:,} | {r['rate']:,.0f} | {r['dropped']:,}"
                    f" | {r['rows']:,} |",
                    flush=True,
                )
        return
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/payload_log.py drives the data plane with wrk: apt-get install wrk (or use --component)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        bench._train(model_dir)
        results = []
        for _ in range(args.rounds):
            for config in args.only:
                r = run(config, model_dir, bench.V1_BODY, args.rate, args.duration, args.conns)
                print(json.dumps(r), file=sys.stderr)
                results.append(r)
    load = os.getloadavg()
    pace = f"paced at {args.rate:,.0f} requests/s" if args.rate > 0 else "closed loop"
    print(
        f"\nwrk {pace}, {args.conns} connections, {args.duration:.0f} s, payload log sample rate 1.0"
        f" (load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})\n"
    )
    print(
        "| config | queue bound | requests | requests/s | non-2xx + errors | p50 ms | p99 ms | max ms"
        " | answered 200 (whole run) | dropped | rows written | server CPU us/request | server CPU (cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['config']} | {CONFIGS[r['config']]:,} | {r['requests']:,} | {r['rps']:,.0f} | {r['errors']}"
            f" | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['answered_200']:,.0f}"
            f" | {r['dropped']:,.0f} | {r['rows']:,} | {r['server_cpu_us_per_request']:.1f}"
            f" | {r['server_cpu_share']:.2f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
