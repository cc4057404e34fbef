"""Benchmark: the feature store's historical retrieval and online lookups.

Historical: N entity rows (default 10,000,000) x F features (default 20) from a feature table of
N rows over N/20 entity keys, point-in-time, four ways in the same run, each in its own process
(so peak memory is each one's own `ru_maxrss`), each reading the same Parquet inputs and
writing a Parquet output, all run `--repeat` times interleaved, each one's best time kept:

- `mlp`: `mlp.features.historical` (spec load, schema check, sha256 of every input for the
  lineage, TTL, DuckDB memory limit 1.5 GB: the default of `mlp features historical`);
- `duckdb`: the bare `COPY (SELECT ... ASOF LEFT JOIN ...) TO` with no TTL, casts or checks,
  with DuckDB's own defaults (memory limit 80% of RAM, one thread per core) and
  `preserve_insertion_order = false`: the floor mlp's overhead is measured against;
- `duckdb-1gb`: the same query under a 1 GB memory limit (mlp's earlier default), spilling to disk;
- `io-floor`: no join at all: DuckDB reads both inputs and writes an output of the result's
  shape (entity row i beside feature row i, `POSITIONAL JOIN`) with mlp's Parquet options and
  no memory limit: what any DuckDB plan pays before it matches a single row (not compared);
- `pandas`: what a user writes: read both files, sort each by time (merge_asof requires it),
  one `merge_asof(by=key, direction="backward", tolerance=TTL)` per feature view (here one),
  write; all of it timed, no memory limit.

All outputs are compared row for row with mlp's (EXCEPT ALL both ways, in DuckDB): the
generated feature rows never tie on (key, time), so the answer is unique. Each child reports
wall time, CPU time (user+sys of all its threads, far less sensitive to a loaded machine) and
peak RSS.

Online: `mlp up` (its own process: uvicorn + the data plane's `FeatureService` on a SQLite store
of K materialized keys) answering `GET /v1/features/VIEW?entity=K` at a fixed
open-loop rate (default 2,000/s) over keep-alive connections for S seconds; latency is measured
from each request's scheduled send time (no coordinated omission). Baseline in the same run:
the same lookups in-process against the store (`FeatureService.get`), to show the HTTP cost.

    .venv/bin/python benchmarks/features.py                       # the full run (heavy)
    .venv/bin/python benchmarks/features.py --rows 200000 --online-seconds 3   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_data(folder: Path, rows: int, features: int, seed: int = 7) -> None:
    import duckdb

    keys = max(1, rows // 20)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SELECT setseed({seed / 100})")
    cols = ", ".join(f"random()::DOUBLE AS f{i}" for i in range(features))
    # feature rows: every key gets 20 updates over 30 days, one at a random second of each
    # 36-hour slot, so no key has two rows at the same time (an ASOF join may take either of
    # two tied rows, which would make the three outputs differ for no fault of any)
    con.execute(
        f"COPY (SELECT (i % {keys})::BIGINT AS customer_id, TIMESTAMP '2024-01-01' + "
        f"to_seconds((i // {keys}) * 129600 + (random() * 129599)::BIGINT) AS ts, {cols} "
        f"FROM range({rows}) t(i)) TO '{folder / 'features.parquet'}' (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT (random() * {keys})::BIGINT % {keys} AS customer_id, "
        f"TIMESTAMP '2024-01-01' + to_seconds((random() * 2592000)::BIGINT) AS event_timestamp, (random() < 0.5)::INT AS label "
        f"FROM range({rows}) t(i)) TO '{folder / 'entities.parquet'}' (FORMAT parquet)"
    )
    con.close()
    specs = folder / "repo" / "specs"
    specs.mkdir(parents=True)
    (folder / "repo" / "environments").mkdir()
    (folder / "repo" / "environments" / "dev.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  target: {kind: local}\n"
    )
    feats = "\n".join(f"    - {{name: f{i}, type: double}}" for i in range(features))
    (specs / "features.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Entity\nmetadata: {name: customer}\nspec: {joinKeys: [customer_id], valueType: long}\n"
        "---\napiVersion: mlp.dev/v1\nkind: FeatureView\nmetadata: {name: stats}\nspec:\n  entities: [customer]\n"
        f"  source: {{kind: parquet, path: data/features.parquet, timestampField: ts}}\n  ttl: 30d\n  features:\n{feats}\n"
    )
    (folder / "repo" / "data").mkdir()
    os.link(folder / "features.parquet", folder / "repo" / "data" / "features.parquet")


# --- the three historical contenders (each run in a child process) --------------------------


def run_mlp(folder: Path, features: int) -> None:
    from mlp.features.historical import historical
    from mlp.features.sources import resolve
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    repo = folder / "repo"
    specs = load(read_directory(repo)).specs
    src = resolve(specs.feature_views["stats"], specs.entities, repo)
    historical(
        [src],
        folder / "entities.parquet",
        folder / "out-mlp.parquet",
        repo=repo,
        temp_dir=folder / "spill",
        progress=lambda m: print(f"  mlp: {m}", file=sys.stderr),
    )


def run_duckdb(folder: Path, features: int, memory_limit: str | None = None) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{folder / 'spill-raw'}'")
    con.execute("SET preserve_insertion_order = false")  # as mlp: no order asked for, none kept
    cols = ", ".join(f"f.f{i}" for i in range(features))
    out = folder / ("out-raw.parquet" if memory_limit is None else "out-raw-capped.parquet")
    con.execute(
        f"COPY (SELECT e.*, {cols} FROM read_parquet('{folder / 'entities.parquet'}') e "
        f"ASOF LEFT JOIN read_parquet('{folder / 'features.parquet'}') f "
        f"ON e.customer_id = f.customer_id AND e.event_timestamp >= f.ts) TO '{out}' (FORMAT parquet)"
    )


def run_duckdb_capped(folder: Path, features: int) -> None:
    run_duckdb(folder, features, memory_limit="1GB")


def run_io_floor(folder: Path, features: int) -> None:
    import duckdb

    from mlp.features.historical import PARQUET_OPTIONS

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    cols = ", ".join(f"f.f{i}" for i in range(features))
    con.execute(
        f"COPY (SELECT e.*, {cols} FROM read_parquet('{folder / 'entities.parquet'}') e "
        f"POSITIONAL JOIN read_parquet('{folder / 'features.parquet'}') f) "
        f"TO '{folder / 'out-floor.parquet'}' ({PARQUET_OPTIONS})"
    )


def run_pandas(folder: Path, features: int) -> None:
    import pandas as pd

    ents = pd.read_parquet(folder / "entities.parquet").sort_values("event_timestamp", kind="stable")
    feats = pd.read_parquet(folder / "features.parquet").sort_values("ts", kind="stable")
    out = pd.merge_asof(
        ents,
        feats,
        left_on="event_timestamp",
        right_on="ts",
        by="customer_id",
        direction="backward",
        tolerance=pd.Timedelta("30D"),  # the view's TTL
    ).drop(columns=["ts"])
    out.to_parquet(folder / "out-pandas.parquet")


CONTENDERS = {
    "mlp": run_mlp,
    "duckdb": run_duckdb,
    "duckdb-1gb": run_duckdb_capped,
    "io-floor": run_io_floor,
    "pandas": run_pandas,
}


def child(name: str, folder: Path, features: int) -> None:
    if name == "io-floor":
        import mlp.features.historical  # noqa: F401  (only for its Parquet options: not the floor's cost)
    t0 = time.perf_counter()
    CONTENDERS[name](folder, features)
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_mib": ru.ru_maxrss / 1024}))


def measure(name: str, folder: Path, features: int) -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, __file__, "--child", name, "--folder", str(folder), "--features", str(features)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def check_equal(folder: Path, features: int, a: str, b: str) -> int:
    """Rows in one output and not the other, both ways (0: the same multiset of rows)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")
    cols = ", ".join(["customer_id", "event_timestamp::TIMESTAMP", "label"] + [f"f{i}" for i in range(features)])
    pa, pb = folder / f"out-{a}.parquet", folder / f"out-{b}.parquet"
    diff = con.execute(
        f"SELECT count(*) FROM ((SELECT {cols} FROM read_parquet('{pa}') EXCEPT ALL "
        f"SELECT {cols} FROM read_parquet('{pb}')) UNION ALL "
        f"(SELECT {cols} FROM read_parquet('{pb}') EXCEPT ALL "
        f"SELECT {cols} FROM read_parquet('{pa}')))"
    ).fetchone()
    return int(diff[0]) if diff else -1


# --- online ------------------------------------------------------------------------------------


def online(folder: Path, keys: int, rate: int, seconds: float, connections: int) -> dict[str, Any]:
    import duckdb

    from mlp.features.online import SQLiteStore, materialize
    from mlp.features.service import FeatureService
    from mlp.features.sources import resolve
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    repo = folder / "repo"
    small = folder / "online-repo"
    if small.exists():
        shutil.rmtree(small)
    shutil.copytree(repo / "specs", small / "specs")
    # no TTL online: the generated data is from 2024 and lookups happen now
    text = (small / "specs" / "features.yaml").read_text().replace("  ttl: 30d\n", "")
    (small / "specs" / "features.yaml").write_text(text)
    (small / "environments").mkdir()
    (small / "environments" / "dev.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  target: {kind: local}\n"
        "  features: {onlineStore: {kind: sqlite, path: online.db}}\n"
    )
    (small / "data").mkdir()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{folder / 'features.parquet'}') WHERE customer_id < {keys}) "
        f"TO '{small / 'data' / 'features.parquet'}' (FORMAT parquet)"
    )
    con.close()
    specs = load(read_directory(small)).specs
    store = SQLiteStore(small / "online.db")
    t0 = time.perf_counter()
    done = materialize(resolve(specs.feature_views["stats"], specs.entities, small), store, repo=small)
    mat_seconds = time.perf_counter() - t0
    svc = FeatureService(small, store)
    svc.update(specs)
    rng = random.Random(1)
    lat_inproc = []  # baseline: the same lookup without HTTP
    for _ in range(20000):
        k = str(rng.randrange(keys))
        t = time.perf_counter()
        svc.get("stats", {"entity": [k]})
        lat_inproc.append(time.perf_counter() - t)
    store.close()
    up = subprocess.Popen(
        [sys.executable, "-m", "mlp.cli.main", "up", str(small), "--port", "0", "--format", "json",
         "--state-dir", str(folder / "up-state"), "--no-payload-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        info = json.loads(up.stdout.readline())
        port = int(info["url"].rsplit(":", 1)[1])
        try:
            import uvloop

            run: Any = uvloop.run
        except ImportError:
            run = asyncio.run
        cpu0, gen0 = _cpu_seconds(up.pid), time.process_time()
        lat, lag, errors = run(_load(port, keys, rate, seconds, connections))
        server_cpu, gen_cpu = _cpu_seconds(up.pid) - cpu0, time.process_time() - gen0
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(15)
    return {
        "materialized": done.rows,
        "materialize_s": mat_seconds,
        "inproc": lat_inproc,
        "http": lat,
        "errors": errors,
        "send_lag": lag,
        "server_cpu_s": server_cpu,
        "generator_cpu_s": gen_cpu,
        "rate": rate,
        "seconds": seconds,
    }


def _cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    port: int, keys: int, rate: int, seconds: float, connections: int
) -> tuple[list[float], list[float], int]:
    lat: list[float] = []
    lag: list[float] = []  # how late each request went out (latency is counted from `due` anyway)
    errors = 0
    per_conn = rate / connections
    start = time.perf_counter() + 0.2

    async def worker(w: int) -> None:
        nonlocal errors
        rng = random.Random(w)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        offset = w / rate  # stagger the connections
        while True:
            due = start + offset + n / per_conn
            if due - start > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            key = rng.randrange(keys)
            lag.append(max(0.0, time.perf_counter() - due))
            writer.write(f"GET /v1/features/stats?entity={key} HTTP/1.1\r\nhost: b\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200") or b'"values":null' in body:
                errors += 1
            lat.append(time.perf_counter() - due)
            n += 1
        writer.close()

    await asyncio.gather(*(worker(w) for w in range(connections)))
    return lat, lag, errors


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="Runs of each contender (interleaved; best kept).")
    ap.add_argument("--online-keys", type=int, default=100_000)
    ap.add_argument("--online-rate", type=int, default=2000)
    ap.add_argument("--online-seconds", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", type=Path, help="Keep the data in this folder.")
    ap.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.folder, args.features)
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mlp-bench-features-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        t = time.perf_counter()
        if not (folder / "entities.parquet").exists():
            make_data(folder, args.rows, args.features)
        print(f"data: {args.rows:,} entity rows, {args.rows:,} feature rows x {args.features} features "
              f"({time.perf_counter() - t:.1f}s to generate)")  # fmt: skip
        results: dict[str, dict[str, float]] = {}
        # interleaved repetitions, each contender's best time kept: the machine is shared and noisy
        order = ["mlp", "duckdb", "duckdb-1gb", "io-floor"] + ([] if args.skip_pandas else ["pandas"])
        for rep in range(args.repeat):
            for name in order:
                print(f"running {name} ({rep + 1}/{args.repeat}) ...", file=sys.stderr)
                r = measure(name, folder, args.features)
                best = results.get(name)
                if best is None or r["seconds"] < best["seconds"]:
                    results[name] = {**r, "peak_mib": max(r["peak_mib"], best["peak_mib"] if best else 0)}
        diffs = {other: check_equal(folder, args.features, "mlp", other) for other in ("raw", "raw-capped", "pandas") if
                 (folder / f"out-{other}.parquet").exists()}  # fmt: skip
        print(f"\nhistorical retrieval (each in its own process; inputs and output Parquet; best of {args.repeat})")
        print(f"{'contender':<20} {'seconds':>9} {'CPU s':>9} {'peak MiB':>9} {'time vs mlp':>12} {'CPU vs mlp':>11}")
        for name, r in results.items():
            ratio = r["seconds"] / results["mlp"]["seconds"]
            cpu = r["cpu_s"] / results["mlp"]["cpu_s"]
            print(
                f"{name:<20} {r['seconds']:>9.1f} {r['cpu_s']:>9.1f} {r['peak_mib']:>9.0f} {ratio:>11.2f}x {cpu:>10.2f}x"
            )
        mlp, raw = results["mlp"], results["duckdb"]
        print(f"mlp / raw ASOF (DuckDB defaults): time {mlp['seconds'] / raw['seconds']:.2f}, "
              f"CPU {mlp['cpu_s'] / raw['cpu_s']:.2f} (goal <= 1.5)")  # fmt: skip
        if "pandas" in results:
            pd_ = results["pandas"]
            print(f"pandas / mlp: time {pd_['seconds'] / mlp['seconds']:.2f}, "
                  f"CPU {pd_['cpu_s'] / mlp['cpu_s']:.2f} (goal >= 5)")  # fmt: skip
            if "io-floor" in results:
                fl = results["io-floor"]
                print(f"pandas / io-floor: time {pd_['seconds'] / fl['seconds']:.2f}, CPU {pd_['cpu_s'] / fl['cpu_s']:.2f} "
                      f"(reading the inputs and writing the output alone: the ceiling of any DuckDB plan)")  # fmt: skip
        print(f"mlp peak memory: {results['mlp']['peak_mib']:.0f} MiB (goal < 2048)")
        for other, diff in diffs.items():
            print(f"rows differing between mlp and {other}: {diff}")

        keys = min(args.online_keys, max(1, args.rows // 20))  # only keys the data has: no empty answers
        o = online(folder, keys, args.online_rate, args.online_seconds, args.connections)
        print(f"\nonline lookups: {o['materialized']:,} keys materialized into SQLite in {o['materialize_s']:.1f}s")
        print(f"{'path':<34} {'n':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, xs in (
            ("in-process FeatureService.get", o["inproc"]),
            (f"HTTP GET at {o['rate']}/s open loop", o["http"]),
        ):
            print(f"{label:<34} {len(xs):>7} {pct(xs, 50):>8.2f} {pct(xs, 99):>8.2f} {max(xs) * 1000:>8.2f}")
        achieved = len(o["http"]) / o["seconds"]
        print(f"achieved rate: {achieved:.0f}/s, errors: {o['errors']}, p99 goal < 5 ms: "
              f"{'met' if pct(o['http'], 99) < 5 else 'NOT met'}")  # fmt: skip
        print(f"mean in-process lookup: {statistics.mean(o['inproc']) * 1e6:.0f} us")
        n = max(1, len(o["http"]))
        print(f"server CPU: {o['server_cpu_s']:.1f} s ({o['server_cpu_s'] / n * 1e6:.0f} us per lookup); "
              f"generator CPU: {o['generator_cpu_s']:.1f} s of {o['seconds']:.0f} s; "
              f"send lag p99 {pct(o['send_lag'], 99):.2f} ms (late sends: the generator's delay or "
              f"a connection still waiting for its previous answer)")  # fmt: skip
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
