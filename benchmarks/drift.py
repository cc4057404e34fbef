"""Drift monitor cost: mlp's time per window against alibi-detect called directly, and ingest rate.

    .venv/bin/python benchmarks/drift.py [--windows 200] [--ingest-rows 1000000]

1. Per-window cost. Reference 10,000 x 20, windows 1,000 x 20, for KS (20 numeric features) and
   Chi-squared (20 categorical features, 8 levels), alibi-detect's defaults (p 0.05, Bonferroni)
   on every side. Each window is one closed payload-log file (the serving layout: ts, model,
   version, sample_rate, request_id, 20 float64 inputs, prediction). In one process, interleaved
   per window in a shuffled order, three sides:
   - `alibi`: `KSDrift/ChiSquareDrift.predict(x)` on the window's array already in memory: the
     detector alone, nothing a monitor needs around it;
   - `alibi+read`: the least a monitor calling alibi-detect directly must do: read the same
     window's Parquet file with pyarrow (the 20 feature columns, one thread, as mlp reads it),
     make the array, `predict`;
   - `mlp test`: mlp's detector alone (`DriftDetector.test`, as the runner holds it) on the
     array in memory: the same p-values as `alibi`, from the reference prepared once per monitor
     (sorted columns; Chi-squared's reference counts taken once) instead of on every `predict`;
   - `mlp check`: `MonitorRunner.check()` exactly as `mlp monitor run` calls it (the runner built
     and prepared once, then one check per window): list the payload log, read the new file's
     used columns, cut the window, the array, the test, the Prometheus gauges, the alert
     conditions, the status line, the last window's side file and one SQLite commit (cursor,
     report, left-over rows).
   Every window asserts that mlp's per-feature p-values equal alibi-detect's on the same array.
   Clock: CPU time of the whole process (`time.process_time`, Arrow's threads included) per window;
   the table gives the mean (total CPU / windows: periodic costs such as SQLite checkpoints count),
   the median and the interquartile range. Goal: `mlp check` under 10 % over `alibi+read` (means);
   the overhead over bare `alibi` is printed beside it, not hidden. So is the split: how much the
   detector saves (`mlp test` against `alibi`) and what the monitor's work around the test costs
   (`mlp check` - `mlp test` against `alibi+read` - `alibi`: reading the file either way, plus
   mlp's listing, windowing, gauges, alert conditions, status line and commit).
2. Ingest. Payload-log files in the serving layout (10,000 rows per file in row groups of 100, as
   the payload log flushes every 0.1 s at 1,000 logged requests/s; every column read) by
   `PayloadSource.read_new`, cut into windows by `Windower`: rows per second with Arrow limited
   to one thread (goal: over 50,000).

Prints a table; exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlp.monitors.runner import MonitorMetrics, MonitorRunner  # noqa: E402
from mlp.monitors.source import PayloadSource, Windower  # noqa: E402

N_REF, N_WIN, N_FEAT = 10_000, 1_000, 20
FEATURES = [f"f{i:02d}" for i in range(N_FEAT)]
SIDES = ("alibi", "alibi+read", "mlp test", "mlp check")
WARM_UP = 3


def data(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "ks":
        return rng.normal(size=(n, N_FEAT))
    return rng.integers(0, 8, size=(n, N_FEAT)).astype(np.float64)


def window_table(x: np.ndarray, start_ms: int = 1_700_000_000_000) -> pa.Table:
    """Rows as the serving payload log writes them."""
    n = x.shape[0]
    cols = {
        "ts": pa.array((start_ms + np.arange(n)).astype("datetime64[ms]")),
        "model": pa.repeat("m", n),
        "version": pa.repeat("1", n),
        "sample_rate": pa.repeat(1.0, n),
        "request_id": pa.array([f"r{start_ms}-{i}" for i in range(n)]),
    }
    cols.update({f: x[:, i] for i, f in enumerate(FEATURES)})
    cols["prediction"] = np.zeros(n)
    return pa.table(cols)


def monitor_config(kind: str) -> dict[str, object]:
    return {
        "monitor": f"bench-{kind}",
        "environment": "bench",
        "model": "m",
        "inputs": FEATURES,
        "outputs": ["prediction"],
        "baselines": {},
        "predictionDrift": False,
        "drift": {
            "detector": kind,
            "features": FEATURES,
            "categorical": [],
            "threshold": 0.05,
            "correction": "bonferroni",
            "window": N_WIN,
            "windowDuration": None,
            "reference": {"uri": "bench", "digest": "bench"},
        },
        "performance": [],
        "alerts": [{"severity": "warning", "for": "5m", "route": None, "receiver": None}],
    }


def bench_window(kind: str, windows: int, tmp: Path) -> dict[str, list[float]]:
    from alibi_detect.cd import ChiSquareDrift, KSDrift

    rng = np.random.default_rng(0)
    ref = data(kind, rng, N_REF)
    alibi = (KSDrift if kind == "ks" else ChiSquareDrift)(ref, p_val=0.05)
    ref_path = tmp / f"ref-{kind}.parquet"
    pq.write_table(pa.table({f: ref[:, i] for i, f in enumerate(FEATURES)}), ref_path)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the status lines go somewhere, as on stderr
    runner = MonitorRunner(
        monitor_config(kind),
        log_root=str(tmp / f"log-{kind}"),
        state_dir=tmp / f"state-{kind}",
        fetch=lambda uri, digest: ref_path,
        metrics=MonitorMetrics(),
        echo=lambda msg: print(msg, file=devnull, flush=True),
    )
    runner.prepare()
    folder = tmp / f"log-{kind}" / "m" / "1"
    folder.mkdir(parents=True)

    def read_then_predict(path: Path) -> None:
        # read as mlp reads a local payload-log file (one thread, no pre-buffering): the same I/O cost
        with pq.ParquetFile(path, pre_buffer=False) as f:
            t = f.read(columns=FEATURES, use_threads=False)
        alibi.predict(np.column_stack([t.column(c).to_numpy() for c in FEATURES]))

    cpu: dict[str, list[float]] = {s: [] for s in SIDES}
    order = list(SIDES)
    for i in range(windows + WARM_UP):
        x = data(kind, rng, N_WIN)
        start = 1_700_000_000_000 + i * N_WIN
        tmp_path, path = folder / f".{start}-{i:06d}.parquet", folder / f"{start}-{i:06d}.parquet"
        pq.write_table(window_table(x, start), tmp_path)
        tmp_path.rename(path)  # closed files appear by rename, as the payload log does it
        rng.shuffle(order)
        for side in order:
            c0 = time.process_time()
            if side == "alibi":
                direct = alibi.predict(x)["data"]
            elif side == "mlp test":
                runner.detector.test(x)
            elif side == "alibi+read":
                read_then_predict(path)
            else:
                (report,) = runner.check()
            c1 = time.process_time()
            if i >= WARM_UP:  # the first calls pay imports and caches
                cpu[side].append((c1 - c0) * 1000)
        assert report.status == "ok" and report.rows == N_WIN, report
        # the same verdict from the same arrays: mlp's per-feature p-values are alibi-detect's, exactly
        assert report.drift is not None
        assert [report.drift["p_values"][f] for f in FEATURES] == direct["p_val"].tolist(), i
    assert runner.detector is not None
    devnull.close()
    return cpu


def bench_ingest(rows: int, tmp: Path) -> tuple[float, float]:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    rng = np.random.default_rng(1)
    per_file = 10_000
    folder = tmp / "payloads" / "m" / "1"
    folder.mkdir(parents=True)
    x = rng.normal(size=(per_file, N_FEAT))
    for i in range(rows // per_file):
        # a 10 s file at 1,000 logged requests/s, flushed every 0.1 s: row groups of 100 rows
        start = 1_700_000_000_000 + i * per_file
        pq.write_table(window_table(x, start), folder / f"{start}-{i:06d}.parquet", row_group_size=100)
    source = PayloadSource(str(tmp / "payloads"), "m")
    windower = Windower(N_WIN)
    c0, t0 = time.process_time(), time.perf_counter()
    windower.add(source.read_new())
    got = sum(w.rows for w in windower.cut(int(time.time() * 1000)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert got == rows, (got, rows)
    return rows / wall, rows / cpu


def quartiles(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=4)
    return q[0], statistics.median(v), q[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--ingest-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    ok = True
    print(
        f"reference {N_REF:,} x {N_FEAT}, window {N_WIN:,} x {N_FEAT}, {args.windows} windows interleaved; "
        f"CPU ms per window (process_time); load average {os.getloadavg()[0]:.1f} at start"
    )
    head = (
        f"{'detector':<8} | {'side':<10} | {'mean':>6} | {'median [p25-p75]':>22} | "
        f"{'vs alibi: mean, median':>22} | {'vs alibi+read: mean, median':>27}"
    )
    print(head)
    print("-" * len(head))
    verdicts = []
    splits: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in ("ks", "chi2"):
            cpu = bench_window(kind, args.windows, tmp)
            mean = {side: statistics.fmean(v) for side, v in cpu.items()}
            median = {side: statistics.median(v) for side, v in cpu.items()}
            for side in SIDES:
                lo, med, hi = quartiles(cpu[side])
                cells = []
                for base, width in (("alibi", 22), ("alibi+read", 27)):
                    if SIDES.index(side) <= SIDES.index(base) or (side, base) == ("mlp test", "alibi+read"):
                        cells.append(" " * width)
                        continue
                    text = f"{mean[side] / mean[base] - 1:+.1%}, {median[side] / median[base] - 1:+.1%}"
                    cells.append(f"{text:>{width}}")
                print(
                    f"{kind:<8} | {side:<10} | {mean[side]:6.2f} | {med:6.2f} [{lo:6.2f}-{hi:6.2f}] | "
                    f"{cells[0]} | {cells[1]}"
                )
            for base in ("alibi+read", "alibi"):
                over = mean["mlp check"] / mean[base] - 1
                verdicts.append((kind, base, over, mean["mlp check"] - mean[base]))
            around, read = mean["mlp check"] - mean["mlp test"], mean["alibi+read"] - mean["alibi"]
            splits.append(
                f"{kind}: the test {mean['mlp test']:.2f} ms against alibi-detect's {mean['alibi']:.2f} "
                f"({mean['mlp test'] / mean['alibi'] - 1:+.1%}); around it {around:.2f} ms against reading the file "
                f"{read:.2f}: mlp's own work {around - read:+.2f} ms, {(around - read) / mean['alibi+read']:+.1%} "
                "of alibi+read"
            )
        rate, cpu_rate = bench_ingest(args.ingest_rows, tmp)
    print(
        f"\ningest: {args.ingest_rows:,} rows, Arrow on 1 thread: {rate:,.0f} rows/s wall, {cpu_rate:,.0f} rows/s CPU"
    )
    print("", *splits, sep="\n")
    for kind, base, over, ms in verdicts:
        met = over < 0.10
        # the goal is against `alibi+read`; bare `alibi` has no payload log to read, shown for what it costs
        ok &= met or base == "alibi"
        print(
            f"{kind}: mlp check over {base}: {over:+.1%} ({ms:+.2f} ms CPU per window, means): "
            f"{'under' if met else 'NOT under'} 10%"
        )
    ok &= rate > 50_000
    print("result:", "ok" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
