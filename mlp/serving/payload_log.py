"""Payload log: sampled inputs and outputs, written to Parquet off the request path.

The request path only appends a tuple of references to a bounded deque (and drops the
record, counting it, when the writer is behind: the log is never allowed to slow serving
down or grow memory without bound). A daemon thread drains it every `flush_seconds` and
writes one Parquet file per model version per flush:

    <dir>/<model>/<version>/<unix_ms>-<seq>.parquet

with columns `ts` (timestamp, ms, UTC), `model`, `version`, one column per signature
input (float64) or `input` (list<double>) when the widths disagree, and one column per
signature output (`prediction` if unnamed). Rotation keeps at most `max_bytes` per model
version by deleting the oldest files. The monitors read these folders as a dataset.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class PayloadLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        flush_seconds: float = 1.0,
        max_queue: int = 10000,
        max_bytes: int = 64 << 20,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.dropped = 0
        self.written_rows = 0
        # A deque, not a queue.Queue: append and popleft are atomic without a lock, which keeps
        # the request path's cost at about a microsecond. The writer polls it every flush.
        self._q: collections.deque[tuple[Any, ...]] = collections.deque()
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0
        # import pyarrow now, at startup: importing it on the writer thread at the first flush
        # holds the GIL for ~0.4 s, a stall every in-flight request would see
        import pyarrow
        import pyarrow.parquet

        self._pa, self._pq = pyarrow, pyarrow.parquet
        # and write one tiny table to memory: the first Parquet write initializes lazily (~0.2 s)
        sample = pyarrow.table({"ts": pyarrow.array(np.zeros(1, dtype="datetime64[ms]")), "x": [1.0], "s": ["a"]})
        pyarrow.parquet.write_table(sample, pyarrow.BufferOutputStream())
        self._thread = threading.Thread(target=self._run, name="mlp-payload-log", daemon=True)
        self._thread.start()

    def put(
        self,
        model: str,
        version: str,
        inputs: np.ndarray,
        outputs: np.ndarray,
        input_names: Sequence[str] = (),
        output_names: Sequence[str] = (),
    ) -> None:
        """Hand a record to the writer; never blocks (drops and counts when the writer is behind)."""
        if len(self._q) >= self.max_queue:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self._q.append((model, version, int(time.time() * 1000), inputs, outputs, input_names, output_names))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        with self._flushed:
            target = self._generation + 1
            self._wake.set()
            self._flushed.wait_for(lambda: self._generation >= target, timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stop.is_set()
            # Records stay plain tuples (model, version, ts_ms, inputs, outputs, in_names,
            # out_names): this thread shares the GIL with the event loop, so its per-record
            # Python work is kept to a few list operations and the rest is vectorized numpy.
            buffers: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
            q = self._q
            for _ in range(len(q)):
                rec = q.popleft()
                buffers[(rec[0], rec[1])].append(rec)
            for key, recs in buffers.items():
                try:
                    self._write(key, recs)
                except Exception:  # a full disk must not kill the thread; these records are lost
                    self.dropped += len(recs)
            with self._flushed:
                self._generation += 1
                self._flushed.notify_all()
            if stopping:
                return

    def _write(self, key: tuple[str, str], recs: list[tuple[Any, ...]]) -> None:
        pa, pq = self._pa, self._pq
        model, version = key
        first = recs[0]
        inputs = [r[3] for r in recs]
        rows = np.fromiter((len(x) for x in inputs), dtype=np.int64, count=len(recs))
        ts = np.repeat(np.fromiter((r[2] for r in recs), dtype=np.int64, count=len(recs)), rows)
        n = int(ts.shape[0])
        cols: dict[str, Any] = {
            "ts": pa.array(ts.astype("datetime64[ms]")),
            "model": pa.array([model] * n, pa.string()),
            "version": pa.array([version] * n, pa.string()),
        }
        x = np.concatenate(inputs)
        x = x.reshape(n, -1)
        names = list(first[5])
        if names and x.shape[1] == len(names) and x.dtype.kind in "biuf":
            xf = x.astype(np.float64, copy=False)
            for i, name in enumerate(names):
                cols[name] = pa.array(np.ascontiguousarray(xf[:, i]))
        else:
            cols["input"] = pa.array(list(x))
        y = np.concatenate([np.asarray(r[4]) for r in recs]).reshape(n, -1)
        out_names = list(first[6]) or ["prediction"]
        if y.shape[1] == 1:
            cols[out_names[0] if out_names[0] not in cols else "prediction"] = pa.array(np.ascontiguousarray(y[:, 0]))
        else:
            cols["prediction"] = pa.array(list(y))
        folder = self.directory / model / version
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{int(time.time() * 1000)}-{next(self._seq):06d}.parquet"
        tmp = folder / ("." + name)
        pq.write_table(pa.table(cols), tmp)
        tmp.rename(folder / name)
        self.written_rows += n
        self._rotate(folder)

    def _rotate(self, folder: Path) -> None:
        files = sorted(folder.glob("*.parquet"))
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        i = 0
        while total > self.max_bytes and i < len(files) - 1:
            total -= sizes[i]
            files[i].unlink(missing_ok=True)
            i += 1
