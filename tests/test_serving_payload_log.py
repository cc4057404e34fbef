"""Payload log: asynchronous Parquet files, size-bounded rotation, drops counted instead of blocking."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlp.serving.payload_log import PayloadLog

NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def test_records_become_parquet_with_one_column_per_input(tmp_path: Path) -> None:
    log = PayloadLog(tmp_path, flush_seconds=0.05)
    for i in range(30):
        log.put("iris", "1", np.full((2, 4), float(i)), np.array([i, i]), NAMES, ("species",))
    log.put("iris", "2", np.ones((1, 4)), np.array([7]), NAMES, ("species",))
    log.flush()
    log.close()
    v1 = pq.ParquetDataset([str(p) for p in (tmp_path / "iris" / "1").glob("*.parquet")]).read()
    assert v1.num_rows == 60
    assert v1.column_names == ["ts", "model", "version", "sample_rate", "request_id", *NAMES, "species"]
    assert set(v1.column("sample_rate").to_pylist()) == {1.0}
    assert sorted(set(v1.column("species").to_pylist())) == list(range(30))
    v2 = pq.read_table(next((tmp_path / "iris" / "2").glob("*.parquet")))
    assert v2.column("species").to_pylist() == [7] and v2.column("version").to_pylist() == ["2"]


def test_rotation_keeps_each_version_folder_under_its_bound(tmp_path: Path) -> None:
    log = PayloadLog(tmp_path, flush_seconds=0.01, file_seconds=0.01, max_bytes=20_000)
    for _ in range(40):
        log.put("m", "1", np.random.default_rng(0).normal(size=(200, 4)), np.zeros(200), NAMES, ("y",))
        time.sleep(0.015)
    log.flush()
    log.close()
    files = sorted((tmp_path / "m" / "1").glob("*.parquet"))
    total = sum(f.stat().st_size for f in files)
    assert log.written_rows == 8000
    assert 1 <= len(files) < 40
    assert total <= 20_000 + max(f.stat().st_size for f in files)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PayloadLog(tmp_path, flush_seconds=10, max_queue=5, on_drop=lambda: dropped.append(1))
    t0 = time.perf_counter()
    for _ in range(500):
        log.put("m", "1", np.ones((1, 4)), np.ones(1), NAMES, ("y",))
    assert time.perf_counter() - t0 < 0.5  # never waits for the writer
    assert log.dropped > 0 and len(dropped) == log.dropped
    log.close()
    # the rows written say at what rate they were kept: weighted, they count every request
    rates = pq.ParquetDataset([str(p) for p in (tmp_path / "m" / "1").glob("*.parquet")]).read()
    kept = rates.column("sample_rate").to_pylist()
    assert min(kept) < 1.0
    assert sum(1 / r for r in kept) == pytest.approx(500)
