"""Batch inference over files larger than memory: CSV, Parquet or JSON Lines in and out.

The input is read in chunks of `chunk_rows` (pyarrow's streaming CSV reader, Parquet
row batches, or JSON Lines read line by line), each chunk is predicted in one model call,
and written straight to the output, so memory holds one chunk at a time. Columns named
like the signature's inputs are used in signature order; without a signature every
column is a feature. The output keeps the input columns and adds one column per output.

`BatchJobs` runs the same thing in background threads for the HTTP batch endpoint.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlp.serving.codec import Signature

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class BatchError(Exception):
    """The batch input or output cannot be processed; one clear line."""


def file_format(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BatchError(f"{path}: unknown file type (use .csv, .parquet or .jsonl)")
    return fmt


def _read(path: Path, chunk_rows: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = file_format(path)
    if fmt == "csv":
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20))
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows)
    elif fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
    else:
        with open(path, "rb") as fh:
            lineno = 0
            while True:
                rows = []
                for line in itertools.islice(fh, chunk_rows):
                    lineno += 1
                    if not line.strip():
                        continue
                    try:
                        rows.append(orjson.loads(line))
                    except orjson.JSONDecodeError as exc:
                        raise BatchError(f"{path}:{lineno}: malformed JSON: {exc}") from None
                if not rows:
                    break
                if not isinstance(rows[0], dict):
                    width = len(rows[0]) if isinstance(rows[0], list) else 1
                    rows = [
                        dict(zip((f"f{i}" for i in range(width)), r if isinstance(r, list) else [r], strict=False))
                        for r in rows
                    ]
                yield pa.RecordBatch.from_pylist(rows)


class _Writer:
    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._w: Any = None
        self._fh: Any = None

    def write(self, batch: Any) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if self.fmt == "parquet":
            if self._w is None:
                self._w = pq.ParquetWriter(self.path, batch.schema)
            self._w.write_batch(batch)
        elif self.fmt == "csv":
            if self._w is None:
                self._w = pacsv.CSVWriter(self.path, batch.schema)
            self._w.write_batch(batch)
        else:
            if self._fh is None:
                self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            for row in batch.to_pylist():
                self._fh.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        if self._fh is not None:
            self._fh.close()


def predict_file(
    predict: Callable[[np.ndarray], np.ndarray],
    sig: Signature,
    input_path: str | Path,
    output_path: str | Path,
    *,
    chunk_rows: int = 10000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Predict every row of `input_path` into `output_path`; return the row count."""
    import pyarrow as pa

    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise BatchError(f"{src}: no such file")
    file_format(dst)
    tmp = dst.with_name(".partial-" + dst.name)
    writer = _Writer(tmp, file_format(dst))
    total = 0
    try:
        for batch in _read(src, chunk_rows):
            if batch.num_rows == 0:
                continue
            names = batch.schema.names
            if sig.inputs and all(n in names for n in sig.inputs):
                cols = list(sig.inputs)
            elif sig.inputs and (any(n in names for n in sig.inputs) or len(names) != sig.width):
                missing = [n for n in sig.inputs if n not in names]
                raise BatchError(f"{src}: missing input column(s) {', '.join(missing)}")
            else:
                cols = names  # unnamed columns (f0, f1, ... from JSON arrays): by position
            try:
                x = np.column_stack(
                    [np.asarray(batch.column(names.index(c)).to_numpy(zero_copy_only=False)) for c in cols]
                ).astype(sig.input_dtype if sig.numeric else object)
            except (ValueError, TypeError) as exc:
                raise BatchError(f"{src}: rows {total}-{total + batch.num_rows}: not numeric: {exc}") from None
            if sig.width is not None and x.shape[1] != sig.width:
                raise BatchError(f"{src}: expected {sig.width} feature columns, found {x.shape[1]}")
            pred = np.asarray(predict(x))
            out_name = sig.outputs[0] if sig.outputs else "prediction"
            if out_name in names:
                out_name = "prediction"
            col = pa.array(pred) if pred.ndim == 1 else pa.array([r.tolist() for r in pred.reshape(len(pred), -1)])
            writer.write(pa.RecordBatch.from_arrays([*batch.columns, col], [*names, out_name]))
            total += batch.num_rows
            if progress is not None:
                progress(total)
        if total == 0:
            raise BatchError(f"{src}: no rows")
        writer.close()
        tmp.replace(dst)
        return total
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


@dataclass
class Job:
    id: str
    model: str
    version: str
    input: str
    output: str
    state: str = "running"  # running | succeeded | failed
    rows: int = 0
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class BatchJobs:
    """Background batch jobs over files inside one folder (paths may not leave it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}

    def resolve(self, rel: Any) -> Path:
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
            raise BatchError(f"{rel!r}: give a path relative to the batch folder")
        path = (self.root / rel).resolve()
        try:
            path.relative_to(self.root.resolve())
        except ValueError:
            raise BatchError(f"{rel!r}: path leaves the batch folder") from None
        return path

    def submit(
        self,
        model: str,
        version: str,
        predict: Callable[[np.ndarray], np.ndarray],
        sig: Signature,
        input_rel: Any,
        output_rel: Any,
    ) -> Job:
        src, dst = self.resolve(input_rel), self.resolve(output_rel)
        file_format(src)
        file_format(dst)
        if not src.is_file():
            raise BatchError(f"{input_rel}: no such file in the batch folder")
        job = Job(uuid.uuid4().hex[:12], model, version, str(input_rel), str(output_rel))
        self.jobs[job.id] = job

        def run() -> None:
            def progress(n: int) -> None:
                job.rows = n

            try:
                job.rows = predict_file(predict, sig, src, dst, progress=progress)
                job.state = "succeeded"
            except Exception as exc:
                job.state, job.error = "failed", str(exc)
            job.finished = time.time()

        threading.Thread(target=run, name=f"mlp-batch-{job.id}", daemon=True).start()
        return job
