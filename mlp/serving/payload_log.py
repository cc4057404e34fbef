"""Payload log: sampled inputs and outputs, written to Parquet off the request path.

The request path only appends a tuple of references to the version's bounded deque (and
drops the record, counting it, when the writer is behind: the log is never allowed to slow
serving down or grow memory without bound). A daemon thread wakes every `flush_seconds`
(0.1 s), turns what arrived into one Arrow table with C-level operations only, and appends
it as a row group to the version's open Parquet file; every `file_seconds` (10 s) the file
is closed and renamed into place:

    <dir>/<model>/<version>/<unix_ms>-<seq>.parquet      (".<name>" while still open)

Small, frequent appends matter on a 2-core machine: one big write per second was a 5 ms
burst of CPU and GIL that showed up directly in the data plane's p99.

Columns: `ts` (timestamp, ms, UTC), `model`, `version`, `sample_rate`, `request_id` (the
answer's request id, on every row of a multi-row request; "" when none), one float64 column
per signature input (or `input`, a list, when the widths disagree), and one column per
signature output (`prediction` if unnamed).

Nothing is dropped while the writer keeps up on average: each version's queue holds up to
`max_queue` records (200,000: 20 s at 10,000 requests/s, about 70 MB at worst), and a
queue past a quarter of that wakes the writer early instead of waiting for its tick. Only
when the writer cannot keep up is a record dropped, and then it is counted
(`dropped`, `on_drop`, `mlp_payload_log_dropped_total`) and the rows written in that
flush carry the rate they were actually kept at: `sample_rate` = the request sample rate
x kept / (kept + dropped). A monitor's window weights its rows by `1 / sample_rate`, so
a window knows its sampling rate past saturation. Rotation keeps at most `max_bytes` of closed files per model
version by deleting the oldest. The monitors read these folders as a dataset (closed files
only: names starting with "." are in progress).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class _Stream:
    """One model version: its pending records and its open file."""

    __slots__ = ("dropped", "input_names", "opened", "output_names", "path", "q", "rate", "writer")

    def __init__(self, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
        self.input_names = input_names
        self.output_names = output_names
        self.rate = 1.0  # the request sample rate records arrive at
        self.dropped = 0  # records dropped since the writer last drained this stream
        self.q: collections.deque[tuple[int, np.ndarray, np.ndarray, str]] = collections.deque()
        self.writer: Any = None
        self.path: Path | None = None
        self.opened = 0.0


class PayloadLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        flush_seconds: float = 0.1,
        file_seconds: float = 10.0,
        max_queue: int = 200_000,
        max_bytes: int = 64 << 20,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.file_seconds = file_seconds
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.dropped = 0
        self.written_rows = 0
        # One deque per model version, not a queue.Queue: append and popleft are atomic
        # without a lock, which keeps the request path's cost at about a microsecond, and the
        # writer needs no grouping. `max_queue` bounds each version's deque.
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seal = False
        self._flushed = threading.Condition()
        self._generation = 0
        # Import pyarrow now, at startup: importing it on the writer thread at the first flush
        # holds the GIL for ~0.4 s, a stall every in-flight request would see; and write one
        # tiny table to memory, because the first Parquet write initializes lazily (~0.2 s).
        import pyarrow
        import pyarrow.parquet

        self._pa, self._pq = pyarrow, pyarrow.parquet
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
        rate: float = 1.0,
        request_id: str = "",
    ) -> None:
        """Hand a record (sampled at `rate`) to the writer; never blocks (drops and counts when it is behind)."""
        stream = self._streams.get((model, version))
        if stream is None:
            stream = self._streams.setdefault((model, version), _Stream(tuple(input_names), tuple(output_names)))
        stream.rate = rate
        q = stream.q
        n = len(q)
        if n >= self.max_queue:
            self.dropped += 1
            stream.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        q.append((int(time.time() * 1000), inputs, outputs, request_id))
        if n == self.max_queue >> 2:
            self._wake.set()  # falling behind: drain now rather than at the next tick

    def flush(self, timeout: float = 5.0) -> None:
        """Write everything queued so far and close the open files (tests, shutdown)."""
        with self._flushed:
            target = self._generation + 1
            self._seal = True
            self._wake.set()
            self._flushed.wait_for(lambda: self._generation >= target, timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # --- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stop.is_set()
            seal, self._seal = self._seal or stopping, False
            now = time.monotonic()
            for key, stream in list(self._streams.items()):
                q = stream.q
                # popleft in a loop, not a swap of the deque: a request thread may be between
                # reading `stream.q` and appending to it, and nothing it appends may be lost
                items = [q.popleft() for _ in range(len(q))]
                dropped, stream.dropped = stream.dropped, 0
                try:
                    if items:
                        self._append(key, stream, items, dropped)
                    if stream.writer is not None and (seal or now - stream.opened >= self.file_seconds):
                        self._close_file(stream)
                except Exception:  # a full disk must not kill the thread; these records are lost
                    self.dropped += len(items)
                    self._abandon(stream)
            with self._flushed:
                self._generation += 1
                self._flushed.notify_all()
            if stopping:
                return

    def _table(
        self,
        key: tuple[str, str],
        stream: _Stream,
        items: list[tuple[int, np.ndarray, np.ndarray, str]],
        dropped: int = 0,
    ) -> Any:
        # This thread shares the GIL with the event loop: everything here is C-level (zip,
        # map, numpy, pyarrow), with no Python work per record.
        pa = self._pa
        model, version = key
        stamps, inputs, outputs, ids = zip(*items, strict=True)
        rows = np.fromiter(map(len, inputs), dtype=np.int64, count=len(items))
        ts = np.repeat(np.array(stamps, dtype=np.int64), rows)
        n = int(ts.shape[0])
        cols: dict[str, Any] = {
            "ts": pa.array(ts.astype("datetime64[ms]")),
            "model": pa.repeat(model, n),
            "version": pa.repeat(version, n),
            "sample_rate": pa.repeat(stream.rate * len(items) / (len(items) + dropped), n),
            "request_id": pa.array(np.repeat(np.array(ids, dtype=object), rows), pa.string()),
        }
        x = np.concatenate(inputs).reshape(n, -1)
        names = stream.input_names
        if names and x.shape[1] == len(names) and x.dtype.kind in "biuf":
            xf = x.astype(np.float64, copy=False)
            for i, name in enumerate(names):
                cols[name] = pa.array(np.ascontiguousarray(xf[:, i]))
        else:
            cols["input"] = pa.array(list(x))
        y = np.concatenate([np.asarray(o) for o in outputs]).reshape(n, -1)
        out_names = stream.output_names or ("prediction",)
        if y.shape[1] == 1:
            cols[out_names[0] if out_names[0] not in cols else "prediction"] = pa.array(np.ascontiguousarray(y[:, 0]))
        else:
            cols["prediction"] = pa.array(list(y))
        return pa.table(cols)

    def _append(
        self,
        key: tuple[str, str],
        stream: _Stream,
        items: list[tuple[int, np.ndarray, np.ndarray, str]],
        dropped: int = 0,
    ) -> None:
        table = self._table(key, stream, items, dropped)
        if stream.writer is not None and not stream.writer.schema.equals(table.schema):
            self._close_file(stream)  # e.g. a new artifact under the same version answers another dtype
        if stream.writer is None:
            folder = self.directory / key[0] / key[1]
            folder.mkdir(parents=True, exist_ok=True)
            stream.path = folder / f".{int(time.time() * 1000)}-{next(self._seq):06d}.parquet"
            stream.writer = self._pq.ParquetWriter(stream.path, table.schema)
            stream.opened = time.monotonic()
        stream.writer.write_table(table)
        self.written_rows += table.num_rows

    def _close_file(self, stream: _Stream) -> None:
        writer, path = stream.writer, stream.path
        stream.writer, stream.path = None, None
        if writer is None or path is None:
            return
        writer.close()
        path.rename(path.with_name(path.name[1:]))
        self._rotate(path.parent)

    def _abandon(self, stream: _Stream) -> None:
        writer, path = stream.writer, stream.path
        stream.writer, stream.path = None, None
        try:
            if writer is not None:
                writer.close()
        except Exception:
            pass
        if path is not None:
            path.unlink(missing_ok=True)

    def _rotate(self, folder: Path) -> None:
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        i = 0
        while total > self.max_bytes and i < len(files) - 1:
            total -= sizes[i]
            files[i].unlink(missing_ok=True)
            i += 1
