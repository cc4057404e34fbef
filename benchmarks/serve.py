"""Serving throughput and latency: mlp's data plane versus KServe's own ModelServer, same run.

What runs (each server in its own process on 127.0.0.1; all are started first and the
runs are interleaved round by round, so background load on a shared machine hits every
server alike; the median round is reported, with every round listed):
  hello   a raw ASGI "hello world" under the same uvicorn (httptools + uvloop): the ceiling
  mlp     the embedded runtime: iris LogisticRegression, canary split 90/10 (two loaded
          versions), micro-batching, Prometheus metrics and the Parquet payload log ON
  kserve  `kserve.ModelServer` (the kserve package, default settings, gRPC off, access log
          off) serving the same joblib file through a `kserve.Model` subclass written the
          way KServe's sklearn server is (joblib.load, predict on the decoded batch)

For each model server and protocol (v1 `:predict`, v2 `/infer`), one request = one iris row:
  saturation  closed loop, `--conns` keep-alive connections each sending back to back
  70%         open loop at 70% of the measured saturation rate, latency measured from each
              request's scheduled send time (no coordinated omission), like wrk2

The load generator is a separate Python process (uvloop, raw sockets, pre-encoded
requests, TCP_NODELAY). On a 2-core machine it shares the CPU with the server, so the hello
world row is the honest ceiling of "this machine + this load generator". If `wrk` is on PATH
(apt-get install wrk), `--wrk` adds a wrk saturation run per row as a cross-check; `wrk_run`
can also pace wrk at a fixed rate (a Lua schedule, `_WRK_PACE`), which
`benchmarks/payload_log.py` uses.

Usage:
  .venv/bin/python benchmarks/serve.py                  # full table (~4 minutes)
  .venv/bin/python benchmarks/serve.py --rounds 1 --duration 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROW = [6.8, 2.8, 4.8, 1.4]
V1_BODY = json.dumps({"instances": [ROW]}).encode()
V2_BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}).encode()


# --- servers (run in child processes) ------------------------------------------------------------


def _serve_hello(port: int) -> None:
    import uvicorn

    body = b'{"predictions":[1]}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    done = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        msg = await receive()
        while msg.get("more_body"):
            msg = await receive()
        await send(start)
        await send(done)

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def _serve_mlp(port: int, model_dir: str) -> None:
    from mlp.serving.app import DataPlane
    from mlp.serving.artifacts import sha256_file
    from mlp.serving.runtime import Runtime
    from mlp.serving.server import bind, serve
    from mlp.serving.testing import deployment, route

    m1, m2 = Path(model_dir) / "1" / "model.joblib", Path(model_dir) / "2" / "model.joblib"
    state = tempfile.mkdtemp(prefix="mlp-bench-")
    rt = Runtime(state, payload_log=True)
    rt.apply(
        deployment(
            "iris",
            [route(1, m1, sha256_file(m1), "stable", 90), route(2, m2, sha256_file(m2), "canary", 10)],
            payload_rate=1.0,
            batching={"maxBatchSize": 32, "maxLatencyMs": float(os.environ.get("MLP_BENCH_MAX_LATENCY_MS", "1"))},
        )
    )
    try:
        serve(DataPlane(rt), bind("127.0.0.1", port))
    finally:
        rt.close()
        shutil.rmtree(state, ignore_errors=True)


def _serve_kserve(port: int, model_dir: str) -> None:
    import logging

    import joblib
    import kserve
    import numpy as np
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class SKLearnModel(kserve.Model):  # the shape of kserve's sklearnserver.SKLearnModel
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.model: Any = None

        def load(self) -> bool:
            self.model = joblib.load(self.path)
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            if isinstance(payload, InferRequest):
                x = payload.inputs[0].as_numpy()
                out = np.asarray(self.model.predict(x))
                return InferResponse(
                    model_name=self.name,
                    response_id=payload.id or "",
                    infer_outputs=[InferOutput(name="output-0", shape=list(out.shape), datatype="INT64", data=out)],
                )
            return {"predictions": self.model.predict(np.asarray(payload["instances"])).tolist()}

    model = SKLearnModel("iris", str(Path(model_dir) / "1" / "model.joblib"))
    model.load()
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).disabled = True
    server.start([model])


# --- load generator (child process) ----------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection, callback driven: no future or task per request.

    Open loop: due requests go to an idle connection (`idle`); when every connection is busy
    they wait in the shared FIFO `backlog` (their latency still counts from the scheduled
    time). Closed loop: the next request goes out as soon as the previous answer is complete.
    """

    def __init__(
        self,
        stats: _Stats,
        request: bytes,
        closed_loop: bool,
        backlog: collections.deque[float],
        idle: collections.deque[_Conn],
    ) -> None:
        self.buf = bytearray()
        self.stats = stats
        self.request = request
        self.closed_loop = closed_loop
        self.transport: Any = None
        self.busy_since: float | None = None
        self.backlog = backlog
        self.idle = idle

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, intended: float) -> None:
        self.busy_since = intended
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            j = head.find(b"\r\n", i)
            length = int(head[i + 15 : j if j > 0 else len(head)]) if i >= 0 else 0
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            now = time.perf_counter()
            assert self.busy_since is not None
            self.stats.record(int(head[9:12]), self.busy_since, now)
            self.busy_since = None
            if self.stats.done(now):
                continue
            if self.closed_loop:
                self.send(now)
            elif self.backlog:
                self.send(self.backlog.popleft())
            else:
                self.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy_since is not None:
            self.stats.record(0, self.busy_since, time.perf_counter())
            self.busy_since = None


class _Stats:
    def __init__(self, t_measure: float, t_end: float) -> None:
        self.t_measure = t_measure
        self.t_end = t_end
        self.lat: list[float] = []
        self.codes: dict[int, int] = {}

    def record(self, status: int, intended: float, now: float) -> None:
        if intended >= self.t_measure and intended < self.t_end:
            self.lat.append(now - intended)
            self.codes[status] = self.codes.get(status, 0) + 1

    def done(self, now: float) -> bool:
        return now >= self.t_end


async def _load(port: int, request: bytes, conns: int, duration: float, warmup: float, rate: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_start = time.perf_counter() + 0.2
    stats = _Stats(t_start + warmup, t_start + warmup + duration)
    protos: list[_Conn] = []
    backlog: collections.deque[float] = collections.deque()
    idle: collections.deque[_Conn] = collections.deque()
    for _ in range(conns):
        _, proto = await loop.create_connection(
            lambda: _Conn(stats, request, rate <= 0, backlog, idle), "127.0.0.1", port
        )
        protos.append(proto)
        idle.append(proto)
    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    if rate <= 0:
        for p in protos:
            p.send(time.perf_counter())
    else:
        # wrk2-style pacing: every tick, each request that is due (by its scheduled time) goes
        # to an idle connection, or waits in the shared backlog for the first one to free up.
        sent = 0
        while True:
            now = time.perf_counter()
            if now >= stats.t_end:
                break
            due = int((now - t_start) * rate)
            while sent < due:
                intended = t_start + sent / rate
                if idle:
                    idle.popleft().send(intended)
                else:
                    backlog.append(intended)
                sent += 1
            # 1 ms ticks: uvloop rounds timers to whole milliseconds, so a shorter sleep
            # would spin and steal the CPU the server under test needs
            await asyncio.sleep(0.001)
    # let the answers of requests sent inside the window arrive (late ones count as late)
    deadline = time.perf_counter() + 10
    while (
        any(p.busy_since is not None and p.busy_since < stats.t_end for p in protos) and time.perf_counter() < deadline
    ):
        await asyncio.sleep(0.01)
    for p in protos:
        p.transport.close()
    lat = sorted(stats.lat)
    n = len(lat)
    ok = stats.codes.get(200, 0)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "rps": n / duration,
        "ok_rps": ok / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "n": n,
        "codes": {str(k): v for k, v in stats.codes.items()},
    }


def _load_main(args: argparse.Namespace) -> None:
    import uvloop

    body = Path(args.body).read_bytes()
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = uvloop.run(_load(args.port, request, args.conns, args.duration, args.warmup, args.rate))
    print(json.dumps(result))


# --- orchestration --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, port: int, model_dir: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "_serve", kind, str(port), model_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server did not come up")


def _check(port: int, path: str, body: bytes) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def _run_load(
    port: int, path: str, body_file: str, conns: int, duration: float, warmup: float, rate: float = 0.0
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "_load",
            "--port",
            str(port),
            "--path",
            path,
            "--body",
            body_file,
            "--conns",
            str(conns),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--rate",
            str(rate),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


# wrk's Lua `done` hook: the run's counts and latency percentiles as one JSON line on stdout
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
    .. '"non_2xx":%d,"timeouts":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
"""

# Rate control for wrk (Debian's wrk has no -R; wrk2 is not packaged). wrk calls `delay()`
# before every request of a connection and waits that many milliseconds. Each call takes the
# next slot of a fixed schedule (one slot every `interval` ms per wrk thread) and waits until
# it: with enough connections the thread sends at exactly the rate; when every connection is
# busy the schedule is kept and the late requests go out at once (the achieved rate, which is
# what is reported, then falls short and catches up, as wrk2's does). wrk truncates the delay
# to whole milliseconds, so a request may leave up to 1 ms before its slot; the schedule
# itself does not drift.
_WRK_PACE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } mlp_timespec;
int clock_gettime(int clk_id, mlp_timespec *tp);
]]
local ts = ffi.new("mlp_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = %r
local slot = nil
delay = function()
  local now = now_ms()
  if slot == nil then slot = now end
  local wait = slot - now
  slot = slot + interval
  if wait < 0 then return 0 end
  return wait
end
"""


def wrk_run(
    port: int,
    path: str,
    body: bytes,
    conns: int,
    duration: float,
    threads: int = 1,
    rate: float = 0.0,
) -> dict[str, Any] | None:
    """A wrk run (POST `body` to `path`); None when wrk is not installed.

    `rate` 0: closed loop, every connection sends back to back. `rate` > 0: the requests are
    paced at `rate` per second overall (`_WRK_PACE`), if `conns` connections suffice.
    Returns wrk's counts (requests, non-2xx, socket errors), latency percentiles (from each
    request's actual send, not from its slot in the schedule) and the CPU seconds wrk used.
    """
    if shutil.which("wrk") is None:
        return None
    script = f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
    script += 'wrk.headers["Content-Type"] = "application/json"\n' + _WRK_DONE
    if rate > 0:
        script += _WRK_PACE % (threads * 1000.0 / rate)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    before = os.times()
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{int(duration)}s",
                "--timeout",
                "10s",
                "-s",
                fh.name,
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(fh.name)
    after = os.times()
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["wrk_cpu_s"] = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return result


def _wrk(port: int, path: str, body: bytes, conns: int, duration: float) -> float | None:
    r = wrk_run(port, path, body, conns, duration)
    return None if r is None else float(r["rps"])


def _train(folder: Path) -> None:
    from mlp.serving.testing import train_iris

    train_iris(folder / "1", 1.0)
    train_iris(folder / "2", 10.0)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its own latencies, not a mix of runs)."""
    ordered = sorted(runs, key=lambda r: r["ok_rps"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all_rps"] = [round(r["ok_rps"]) for r in runs]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description="mlp vs kserve.ModelServer serving benchmark")
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median run is reported")
    ap.add_argument("--conns", type=int, default=32, help="connections per run")
    ap.add_argument("--only", nargs="*", default=["hello", "mlp", "kserve"])
    ap.add_argument(
        "--levels",
        nargs="*",
        type=float,
        default=[0.35, 0.7],
        help="open-loop rates as fractions of the measured saturation",
    )
    ap.add_argument("--wrk", action="store_true", help="also measure saturation with wrk (if installed)")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mlp-serve-bench-"))
    _train(tmp)
    (tmp / "v1.json").write_bytes(V1_BODY)
    (tmp / "v2.json").write_bytes(V2_BODY)
    print(
        f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; load generator: 1 Python process; "
        f"{args.conns} connections; {args.duration:.0f}s measured after {args.warmup:.1f}s warm-up; "
        f"{args.rounds} interleaved rounds, median reported",
        file=sys.stderr,
    )
    plans = {
        "hello": [("-", "/v1/models/iris:predict", "v1.json")],
        "mlp": [("v1", "/v1/models/iris:predict", "v1.json"), ("v2", "/v2/models/iris/infer", "v2.json")],
        "kserve": [("v1", "/v1/models/iris:predict", "v1.json"), ("v2", "/v2/models/iris/infer", "v2.json")],
    }
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rows: list[dict[str, Any]] = []
    try:
        # All servers up at once (an idle server costs nothing), then interleave the runs
        # so that the machine's background noise spreads over every server alike.
        for kind in args.only:
            port = _free_port()
            procs[kind] = (_start(kind, port, str(tmp)), port)
        cases = [(kind, proto, path, str(tmp / body)) for kind in args.only for proto, path, body in plans[kind]]
        for kind, proto, path, body in cases:
            if kind != "hello":
                answer = _check(procs[kind][1], path, Path(body).read_bytes())
                print(f"# {kind} {proto} sample answer: {answer[:110]}", file=sys.stderr)
        sat_runs: dict[tuple[str, str], list[dict[str, Any]]] = {(k, p): [] for k, p, _, _ in cases}
        for _ in range(args.rounds):
            for kind, proto, path, body in cases:
                sat_runs[(kind, proto)].append(
                    _run_load(procs[kind][1], path, body, args.conns, args.duration, args.warmup)
                )
        sat = {key: _median_run(runs) for key, runs in sat_runs.items()}
        for (kind, proto), r in sat.items():
            row = {"server": kind, "protocol": proto, "load": "saturation", **r}
            if args.wrk:
                case = next(c for c in cases if c[0] == kind and c[1] == proto)
                row["wrk_rps"] = _wrk(procs[kind][1], case[2], Path(case[3]).read_bytes(), args.conns, args.duration)
            rows.append(row)
            print(_fmt(row), file=sys.stderr)
        for level in args.levels:
            open_runs: dict[tuple[str, str], list[dict[str, Any]]] = {(k, p): [] for k, p, _, _ in cases}
            for _ in range(args.rounds):
                for kind, proto, path, body in cases:
                    target = level * sat[(kind, proto)]["ok_rps"]
                    run = _run_load(procs[kind][1], path, body, args.conns, args.duration, args.warmup, rate=target)
                    run["target"] = target
                    open_runs[(kind, proto)].append(run)
            for (kind, proto), runs in open_runs.items():
                r = _median_run(runs)
                kept = r["ok_rps"] >= 0.95 * r["target"]
                row = {
                    "server": kind,
                    "protocol": proto,
                    "load": f"{level:.0%} ({r['target']:,.0f}/s){'' if kept else ' NOT SUSTAINED'}",
                    **r,
                }
                rows.append(row)
                print(_fmt(row), file=sys.stderr)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _fmt(r: dict[str, Any]) -> str:
    return (
        f"  {r['server']:<7} {r['protocol']:<3} {r['load']:<20} {r['ok_rps']:>9,.0f} req/s  "
        f"p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  codes {r['codes']}"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | protocol | load | requests/s (200) | p50 ms | p99 ms | non-200 | every round (req/s) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bad = sum(v for k, v in r["codes"].items() if k != "200")
        lines.append(
            f"| {r['server']} | {r['protocol']} | {r['load']} | {r['ok_rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {bad} | {', '.join(f'{x:,}' for x in r.get('all_rps', []))} |"
        )
    lines.append("")
    sat = {(r["server"], r["protocol"]): r["ok_rps"] for r in rows if r["load"] == "saturation"}
    for proto in ("v1", "v2"):
        if ("mlp", proto) in sat and ("kserve", proto) in sat and sat[("kserve", proto)]:
            lines.append(
                f"mlp / kserve throughput at saturation, {proto}: {sat[('mlp', proto)] / sat[('kserve', proto)]:.2f}x"
            )
    if ("hello", "-") in sat and ("mlp", "v1") in sat:
        lines.append(f"mlp v1 / hello-world ceiling: {sat[('mlp', 'v1')] / sat[('hello', '-')]:.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        kind, port, model_dir = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        {
            "hello": lambda: _serve_hello(port),
            "mlp": lambda: _serve_mlp(port, model_dir),
            "kserve": lambda: _serve_kserve(port, model_dir),
        }[kind]()
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        p.add_argument("--port", type=int)
        p.add_argument("--path")
        p.add_argument("--body")
        p.add_argument("--conns", type=int)
        p.add_argument("--duration", type=float)
        p.add_argument("--warmup", type=float)
        p.add_argument("--rate", type=float)
        _load_main(p.parse_args())
    else:
        main()
