"""The tracking database: experiments, runs, params, tags and metric history in SQL.

SQLite (the default, a file under the state folder, WAL journal) or PostgreSQL (a
`postgresql+psycopg://` URL), both through SQLAlchemy Core. Every write is one transaction
committed before the server answers, so an acknowledged point survives the server being
killed. Values keep MLflow's semantics: a param cannot change once logged, identical metric
points are stored once, NaN is kept as a flag and +/-infinity as the largest finite double.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mlp.tracking.errors import TrackingError, not_found
from mlp.tracking.filters import Clause, OrderBy, parse_filter, parse_order_by

RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
MAX_PARAM_VALUE = 6000  # MLflow's limit (characters)
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_SEARCH_RESULTS = 50000
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"

metadata = sa.MetaData()
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("experiment_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("artifact_location", sa.String(2000)),
    sa.Column("lifecycle_stage", sa.String(32), nullable=False, default="active"),
    sa.Column("creation_time", sa.BigInteger),
    sa.Column("last_update_time", sa.BigInteger),
)
experiment_tags = sa.Table(
    "experiment_tags",
    metadata,
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.experiment_id"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY), primary_key=True),
    sa.Column("value", sa.Text),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_uuid", sa.String(32), primary_key=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.experiment_id"), nullable=False, index=True),
    sa.Column("name", sa.String(250)),
    sa.Column("user_id", sa.String(256)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("start_time", sa.BigInteger),
    sa.Column("end_time", sa.BigInteger),
    sa.Column("artifact_uri", sa.String(2000)),
    sa.Column("lifecycle_stage", sa.String(20), nullable=False),
    sa.Column("deleted_time", sa.BigInteger),
)
params = sa.Table(
    "params",
    metadata,
    sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY), primary_key=True),
    sa.Column("value", sa.Text),
)
metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY), primary_key=True),
    sa.Column("timestamp", sa.BigInteger, primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.Float(precision=53), primary_key=True),
    sa.Column("is_nan", sa.Boolean, primary_key=True),
)
latest_metrics = sa.Table(
    "latest_metrics",
    metadata,
    sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY), primary_key=True),
    sa.Column("timestamp", sa.BigInteger),
    sa.Column("step", sa.BigInteger),
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("is_nan", sa.Boolean),
)
# a run's dataset inputs (name, digest, source) and model inputs/outputs, as MLflow documents
run_io = sa.Table(
    "run_io",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid"), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # dataset_inputs | model_inputs | model_outputs
    sa.Column("document", sa.Text, nullable=False),
)
# MLflow 3 "logged models" (what mlflow.<flavor>.log_model creates): kept as JSON documents
logged_models = sa.Table(
    "logged_models",
    metadata,
    sa.Column("model_id", sa.String(64), primary_key=True),
    sa.Column("experiment_id", sa.Integer, nullable=False, index=True),
    sa.Column("source_run_id", sa.String(32), index=True),
    sa.Column("document", sa.Text, nullable=False),
)


class RunRow(NamedTuple):
    """A `runs` row as the hand-written statements read it."""

    run_uuid: str
    experiment_id: int
    name: str | None
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str | None
    lifecycle_stage: str


RUN_COLUMNS = ", ".join(RunRow._fields)
# Hot statements are plain SQL run on the driver's cursor inside SQLAlchemy's transaction: building
# and compiling a Core statement costs about 15x the SQLite call itself (one request runs several).
# They are written with `?` placeholders; psycopg's `%s` is substituted once per statement.
SQL_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_uuid = ?"
SQL_EXPERIMENT_FOR_RUN = "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?"
SQL_INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
SQL_INSERT_TAG = "INSERT INTO tags (run_uuid, key, value) VALUES (?, ?, ?)"
SQL_INSERT_PARAM = "INSERT INTO params (run_uuid, key, value) VALUES (?, ?, ?)"
# identical points are stored once (MLflow's primary key covers the whole point)
SQL_INSERT_METRIC = (
    "INSERT INTO metrics (run_uuid, key, timestamp, step, value, is_nan) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
SQL_INSERT_LATEST = (
    "INSERT INTO latest_metrics (run_uuid, key, timestamp, step, value, is_nan) VALUES (?, ?, ?, ?, ?, ?)"
)
SQL_UPDATE_LATEST = (
    "UPDATE latest_metrics SET timestamp = ?, step = ?, value = ?, is_nan = ? WHERE run_uuid = ? AND key = ?"
)
SQL_RUN_NAME = "UPDATE runs SET name = ? WHERE run_uuid = ?"


def _in(column: str, n: int) -> str:
    return f"{column} IN ({', '.join('?' * n)})"


def now_ms() -> int:
    return int(time.time() * 1000)


def stored_value(value: float) -> tuple[float, bool]:
    """MLflow's storage of a metric value: NaN as a flag, infinities clamped to the largest double."""
    if math.isnan(value):
        return 0.0, True
    if math.isinf(value):
        return (sys.float_info.max if value > 0 else -sys.float_info.max), False
    return value, False


def _metric_json(key: str, value: float, is_nan: bool, timestamp: int, step: int) -> dict[str, Any]:
    return {"key": key, "value": "NaN" if is_nan else value, "timestamp": timestamp, "step": step}


@dataclass
class Batch:
    """What one log-batch (or log-metric/param/tag) call writes."""

    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, timestamp, step
    params: list[tuple[str, str]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)


def _validate_key(kind: str, key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TrackingError(f"Missing value for required parameter 'key' ({kind})")
    if len(key) > MAX_KEY:
        raise TrackingError(
            f"{kind} name '{key[:40]}...' had length {len(key)}, which exceeded length limit of {MAX_KEY}"
        )
    if key.startswith("/") or ".." in key.split("/") or "\x00" in key:
        raise TrackingError(f"Invalid {kind.lower()} name: '{key}'. Names may not contain '..' path segments")
    return key


class TrackingStore:
    """Experiments and runs in one SQL database; thread-safe, one transaction per write."""

    def __init__(self, url: str, default_artifact_root: str = "mlflow-artifacts:") -> None:
        self.url = url
        self.default_artifact_root = default_artifact_root.rstrip("/")
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs.update(pool_size=8, max_overflow=8, pool_pre_ping=True)
        self.engine: Engine = sa.create_engine(url, **kwargs)
        # SQLite allows one writer: serialise writes in-process instead of spinning on SQLITE_BUSY
        self._write_lock = threading.Lock() if self.is_sqlite else None
        if self.is_sqlite:

            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a committed transaction survives the process being killed
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
                # LIKE is case-sensitive in MLflow's search language (ILIKE is not); MLflow sets the same
                cur.execute("PRAGMA case_sensitive_like=ON")
                cur.close()

        metadata.create_all(self.engine)
        with self._write() as conn:
            if (
                conn.execute(sa.select(experiments.c.experiment_id).where(experiments.c.experiment_id == 0)).first()
                is None
            ):
                ts = now_ms()
                conn.execute(
                    experiments.insert().values(
                        experiment_id=0,
                        name="Default",
                        artifact_location=f"{self.default_artifact_root}/0",
                        lifecycle_stage="active",
                        creation_time=ts,
                        last_update_time=ts,
                    )
                )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    # --- experiments ---------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags_: Iterable[tuple[str, str]] = ()
    ) -> str:
        if not isinstance(name, str) or not name.strip():
            raise TrackingError("Invalid experiment name: '' (an experiment needs a name)")
        ts = now_ms()
        with self._write() as conn:
            if conn.execute(sa.select(experiments.c.experiment_id).where(experiments.c.name == name)).first():
                raise TrackingError(f"Experiment '{name}' already exists.", "RESOURCE_ALREADY_EXISTS")
            result = conn.execute(
                experiments.insert().values(
                    name=name,
                    artifact_location=artifact_location,
                    lifecycle_stage="active",
                    creation_time=ts,
                    last_update_time=ts,
                )
            )
            exp_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            if not artifact_location:
                conn.execute(
                    experiments.update()
                    .where(experiments.c.experiment_id == exp_id)
                    .values(artifact_location=f"{self.default_artifact_root}/{exp_id}")
                )
            rows = [{"experiment_id": exp_id, "key": k, "value": v} for k, v in tags_]
            if rows:
                conn.execute(experiment_tags.insert(), rows)
        return str(exp_id)

    def _experiment_json(self, conn: Connection, row: Any) -> dict[str, Any]:
        tag_rows = conn.execute(
            sa.select(experiment_tags.c.key, experiment_tags.c.value).where(
                experiment_tags.c.experiment_id == row.experiment_id
            )
        ).all()
        out: dict[str, Any] = {
            "experiment_id": str(row.experiment_id),
            "name": row.name,
            "artifact_location": row.artifact_location,
            "lifecycle_stage": row.lifecycle_stage,
            "last_update_time": row.last_update_time,
            "creation_time": row.creation_time,
        }
        if tag_rows:
            out["tags"] = [{"key": k, "value": v} for k, v in tag_rows]
        return out

    @staticmethod
    def _exp_id(experiment_id: Any) -> int:
        try:
            return int(str(experiment_id))
        except ValueError:
            raise not_found(f"No Experiment with id={experiment_id} exists") from None

    def get_experiment(self, experiment_id: Any) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(experiments).where(experiments.c.experiment_id == self._exp_id(experiment_id))
            ).first()
            if row is None:
                raise not_found(f"No Experiment with id={experiment_id} exists")
            return self._experiment_json(conn, row)

    def get_experiment_by_name(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(experiments).where(experiments.c.name == name)).first()
            if row is None:
                raise not_found(f"Could not find experiment with name '{name}'")
            return self._experiment_json(conn, row)

    def search_experiments(
        self,
        view_type: str = "ACTIVE_ONLY",
        max_results: int = 1000,
        page_token: str | None = None,
        name_like: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        offset = _decode_token(page_token)
        query = sa.select(experiments)
        if view_type == "ACTIVE_ONLY":
            query = query.where(experiments.c.lifecycle_stage == "active")
        elif view_type == "DELETED_ONLY":
            query = query.where(experiments.c.lifecycle_stage == "deleted")
        if name_like:
            query = query.where(experiments.c.name.like(name_like))
        query = query.order_by(experiments.c.creation_time.desc(), experiments.c.experiment_id.asc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.offset(offset).limit(max_results + 1)).all()
            out = [self._experiment_json(conn, r) for r in rows[:max_results]]
        token = _encode_token(offset + max_results) if len(rows) > max_results else None
        return out, token

    def set_experiment_tag(self, experiment_id: Any, key: str, value: str) -> None:
        exp = self._exp_id(experiment_id)
        _validate_key("Tag", key)
        self.get_experiment(exp)
        with self._write() as conn:
            conn.execute(
                experiment_tags.delete().where(experiment_tags.c.experiment_id == exp, experiment_tags.c.key == key)
            )
            conn.execute(experiment_tags.insert().values(experiment_id=exp, key=key, value=value))

    # --- runs ---------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: Any,
        user_id: str | None = None,
        start_time: int | None = None,
        tags_: Sequence[tuple[str, str]] = (),
        run_name: str | None = None,
    ) -> dict[str, Any]:
        exp_id = self._exp_id(experiment_id if experiment_id not in (None, "") else "0")
        tag_map = dict(tags_)
        for k in tag_map:
            _validate_key("Tag", k)
        name = run_name or tag_map.get(RUN_NAME_TAG) or _random_name()
        tag_map[RUN_NAME_TAG] = name
        if user_id and USER_TAG not in tag_map:
            tag_map[USER_TAG] = user_id
        run_id = uuid.uuid4().hex
        with self._write() as conn:
            cur = self._cursor(conn)
            cur.execute(self._sql(SQL_EXPERIMENT_FOR_RUN), (exp_id,))
            exp = cur.fetchone()
            if exp is None:
                raise not_found(f"No Experiment with id={experiment_id} exists")
            if exp[1] != "active":
                raise TrackingError(f"The experiment {exp_id} must be in the 'active' state.", "INVALID_STATE")
            row = RunRow(
                run_id,
                exp_id,
                name,
                user_id or "",
                "RUNNING",
                start_time if start_time is not None else now_ms(),
                None,
                f"{exp[0].rstrip('/')}/{run_id}/artifacts",
                "active",
            )
            cur.execute(self._sql(SQL_INSERT_RUN), row)
            cur.executemany(self._sql(SQL_INSERT_TAG), [(run_id, k, v) for k, v in tag_map.items()])
        # what get_run would read back: a new run has only its tags
        tag_list = [{"key": k, "value": tag_map[k]} for k in sorted(tag_map)]
        return {"info": self._info_json(row), "data": {"tags": tag_list}, "inputs": {}, "outputs": {}}

    def _sql(self, text: str) -> str:
        return text if self.is_sqlite else text.replace("?", "%s")

    @staticmethod
    def _cursor(conn: Connection) -> Any:
        """The driver's cursor inside `conn`'s transaction (committed or rolled back with it)."""
        return conn.connection.cursor()

    def _run_row(self, conn: Connection, run_id: Any) -> RunRow:
        if not isinstance(run_id, str) or not run_id:
            raise TrackingError("Missing value for required parameter 'run_id'.")
        cur = self._cursor(conn)
        cur.execute(self._sql(SQL_RUN), (run_id,))
        found = cur.fetchone()
        if found is None:
            raise not_found(f"Run with id={run_id} not found")
        return RunRow._make(found)

    def _active_run(self, conn: Connection, run_id: Any) -> RunRow:
        row = self._run_row(conn, run_id)
        if row.lifecycle_stage != "active":
            raise TrackingError(
                f"The run {run_id} must be in the 'active' state. Current state is {row.lifecycle_stage}.",
                "INVALID_PARAMETER_VALUE",
            )
        return row

    @staticmethod
    def _info_json(row: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "run_uuid": row.run_uuid,
            "run_id": row.run_uuid,
            "run_name": row.name or "",
            "experiment_id": str(row.experiment_id),
            "user_id": row.user_id or "",
            "status": row.status,
            "start_time": row.start_time,
            "artifact_uri": row.artifact_uri,
            "lifecycle_stage": row.lifecycle_stage,
        }
        if row.end_time is not None:
            info["end_time"] = row.end_time
        return info

    def _runs_json(self, conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """Whole runs (info, latest metrics, params, tags, inputs): one query per table per 2,000 runs."""
        data: dict[str, dict[str, Any]] = {}
        for row in rows:
            data[row.run_uuid] = {}
        ids = list(data)
        io: dict[str, dict[str, list[Any]]] = {}
        cur = self._cursor(conn)
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            where = self._sql(_in("run_uuid", len(chunk)))
            cur.execute(
                f"SELECT run_uuid, key, value, is_nan, timestamp, step FROM latest_metrics WHERE {where} ORDER BY key",
                chunk,
            )
            for rid, key, value, is_nan, ts, step in cur:
                data[rid].setdefault("metrics", []).append(
                    {"key": key, "value": "NaN" if is_nan else value, "timestamp": ts, "step": step}
                )
            for table in ("params", "tags"):
                cur.execute(f"SELECT run_uuid, key, value FROM {table} WHERE {where} ORDER BY key", chunk)
                for rid, key, value in cur:
                    data[rid].setdefault(table, []).append({"key": key, "value": value})
            cur.execute(f"SELECT run_uuid, kind, document FROM run_io WHERE {where} ORDER BY id", chunk)
            for rid, kind, document in cur:
                io.setdefault(rid, {}).setdefault(kind, []).append(json.loads(document))
        out = []
        for row in rows:
            docs = io.get(row.run_uuid, {})
            inputs = {k: docs[k] for k in ("dataset_inputs", "model_inputs") if k in docs}
            outputs = {k: docs[k] for k in ("model_outputs",) if k in docs}
            out.append({"info": self._info_json(row), "data": data[row.run_uuid], "inputs": inputs, "outputs": outputs})
        return out

    def log_inputs(self, run_id: Any, datasets: list[Any], models: list[Any]) -> None:
        """Dataset inputs (name, digest, source_type, source) and model inputs; a repeated dataset is kept once."""
        for d in datasets:
            ds = d.get("dataset") if isinstance(d, dict) else None
            if not isinstance(ds, dict) or not ds.get("name") or not ds.get("digest"):
                raise TrackingError(f"Invalid dataset input {str(d)[:80]}: a dataset needs a name and a digest")
        with self._write() as conn:
            self._active_run(conn, run_id)
            seen = {
                r.document
                for r in conn.execute(
                    sa.select(run_io.c.document).where(run_io.c.run_uuid == run_id, run_io.c.kind == "dataset_inputs")
                )
            }
            rows = []
            for d in datasets:
                doc = json.dumps(d, sort_keys=True)
                if doc not in seen:
                    seen.add(doc)
                    rows.append({"run_uuid": run_id, "kind": "dataset_inputs", "document": doc})
            rows += [
                {"run_uuid": run_id, "kind": "model_inputs", "document": json.dumps(m, sort_keys=True)} for m in models
            ]
            if rows:
                conn.execute(run_io.insert(), rows)

    def log_outputs(self, run_id: Any, models: list[Any]) -> None:
        with self._write() as conn:
            self._active_run(conn, run_id)
            rows = [
                {"run_uuid": run_id, "kind": "model_outputs", "document": json.dumps(m, sort_keys=True)} for m in models
            ]
            if rows:
                conn.execute(run_io.insert(), rows)

    def get_run(self, run_id: Any) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._runs_json(conn, [self._run_row(conn, run_id)])[0]

    def update_run(
        self, run_id: Any, status: str | None = None, end_time: int | None = None, run_name: str | None = None
    ) -> dict[str, Any]:
        if status is not None and status not in RUN_STATUSES:
            raise TrackingError(f"Invalid value {status!r} for parameter 'status': one of {', '.join(RUN_STATUSES)}")
        with self._write() as conn:
            row = self._active_run(conn, run_id)
            values: dict[str, Any] = {}
            if status:
                values["status"] = status
            if end_time is not None:
                values["end_time"] = end_time
            if run_name:
                values["name"] = run_name
                self._set_tags(conn, row.run_uuid, [(RUN_NAME_TAG, run_name)])
            if values:
                cur = self._cursor(conn)
                assignments = ", ".join(f"{column} = ?" for column in values)
                cur.execute(self._sql(f"UPDATE runs SET {assignments} WHERE run_uuid = ?"), [*values.values(), run_id])
            return self._info_json(row._replace(**values))

    def delete_run(self, run_id: Any) -> None:
        with self._write() as conn:
            self._run_row(conn, run_id)
            conn.execute(
                runs.update().where(runs.c.run_uuid == run_id).values(lifecycle_stage="deleted", deleted_time=now_ms())
            )

    def restore_run(self, run_id: Any) -> None:
        with self._write() as conn:
            self._run_row(conn, run_id)
            conn.execute(
                runs.update().where(runs.c.run_uuid == run_id).values(lifecycle_stage="active", deleted_time=None)
            )

    def delete_tag(self, run_id: Any, key: str) -> None:
        with self._write() as conn:
            self._active_run(conn, run_id)
            result = conn.execute(tags.delete().where(tags.c.run_uuid == run_id, tags.c.key == key))
            if result.rowcount == 0:
                raise not_found(f"No tag with name: {key} in run with id {run_id}")

    # --- logging ------------------------------------------------------------------------

    def log_batch(self, run_id: Any, batch: Batch) -> None:
        """Params, tags and metrics of one request in one transaction: all stored or none."""
        if (
            len(batch.metrics) > MAX_BATCH_METRICS
            or len(batch.params) > MAX_BATCH_PARAMS
            or len(batch.tags) > MAX_BATCH_TAGS
        ):
            raise TrackingError(
                f"A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params "
                f"and {MAX_BATCH_TAGS} tags; got {len(batch.metrics)}, {len(batch.params)} and {len(batch.tags)}"
            )
        for k, v in batch.params:
            _validate_key("Param", k)
            if len(v) > MAX_PARAM_VALUE:
                raise TrackingError(
                    f"Param value '{v[:40]}...' had length {len(v)}, which exceeded length limit of {MAX_PARAM_VALUE}"
                )
        for k, v in batch.tags:
            _validate_key("Tag", k)
            if len(v) > MAX_TAG_VALUE:
                raise TrackingError(
                    f"Tag value '{v[:40]}...' had length {len(v)}, which exceeded length limit of {MAX_TAG_VALUE}"
                )
        rows = []
        for k, value, ts, step in batch.metrics:
            _validate_key("Metric", k)
            stored, is_nan = stored_value(value)
            rows.append((run_id, k, ts, step, stored, is_nan))
        with self._write() as conn:
            self._active_run(conn, run_id)
            if batch.params:
                self._log_params(conn, run_id, batch.params)
            if batch.tags:
                self._set_tags(conn, run_id, batch.tags)
            if rows:
                self._cursor(conn).executemany(self._sql(SQL_INSERT_METRIC), rows)
                self._update_latest(conn, run_id, rows)

    def _log_params(self, conn: Connection, run_id: str, items: list[tuple[str, str]]) -> None:
        wanted: dict[str, str] = {}
        for k, v in items:
            if k in wanted and wanted[k] != v:
                raise TrackingError(
                    f"Duplicate parameter keys have been submitted: ['{k}']. Please ensure the request contains only one param value per param key."
                )
            wanted[k] = v
        cur = self._cursor(conn)
        cur.execute(
            self._sql(f"SELECT key, value FROM params WHERE run_uuid = ? AND {_in('key', len(wanted))}"),
            [run_id, *wanted],
        )
        existing = dict(cur.fetchall())
        for k, v in wanted.items():
            if k in existing and existing[k] != v:
                raise TrackingError(
                    f"Changing param values is not allowed. Param with key='{k}' was already logged with value='{existing[k]}' "
                    f"for run ID='{run_id}'. Attempted logging new value '{v}'."
                )
        new = [(run_id, k, v) for k, v in wanted.items() if k not in existing]
        if new:
            cur.executemany(self._sql(SQL_INSERT_PARAM), new)

    def _set_tags(self, conn: Connection, run_id: str, items: list[tuple[str, str]]) -> None:
        final = dict(items)
        cur = self._cursor(conn)
        cur.execute(self._sql(f"DELETE FROM tags WHERE run_uuid = ? AND {_in('key', len(final))}"), [run_id, *final])
        cur.executemany(self._sql(SQL_INSERT_TAG), [(run_id, k, v) for k, v in final.items()])
        if RUN_NAME_TAG in final:
            cur.execute(self._sql(SQL_RUN_NAME), (final[RUN_NAME_TAG], run_id))

    def _update_latest(self, conn: Connection, run_id: str, rows: list[tuple[str, str, int, int, float, bool]]) -> None:
        """Latest value per key: the point with the greatest (step, timestamp, value), as MLflow orders them."""

        def rank(ts: int, step: int, value: float, is_nan: bool) -> tuple[int, int, bool, float]:
            return (step, ts, not is_nan, value)

        best: dict[str, tuple[str, str, int, int, float, bool]] = {}
        for r in rows:
            cur_best = best.get(r[1])
            if cur_best is None or rank(*r[2:]) > rank(*cur_best[2:]):
                best[r[1]] = r
        cur = self._cursor(conn)
        cur.execute(
            self._sql(
                f"SELECT key, timestamp, step, value, is_nan FROM latest_metrics WHERE run_uuid = ? AND {_in('key', len(best))}"
            ),
            [run_id, *best],
        )
        current = {key: (ts, step, value, bool(is_nan)) for key, ts, step, value, is_nan in cur.fetchall()}
        for key, r in best.items():
            old = current.get(key)
            if old is None:
                cur.execute(self._sql(SQL_INSERT_LATEST), r)
            elif rank(*r[2:]) > rank(*old):
                cur.execute(self._sql(SQL_UPDATE_LATEST), (*r[2:], run_id, key))

    def get_metric_history(
        self, run_id: Any, key: str, max_results: int | None = None, page_token: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        offset = _decode_token(page_token)
        with self.engine.connect() as conn:
            self._run_row(conn, run_id)
            query = (
                sa.select(metrics)
                .where(metrics.c.run_uuid == run_id, metrics.c.key == key)
                .order_by(metrics.c.timestamp, metrics.c.step, metrics.c.value)
                .offset(offset)
            )
            if max_results:
                query = query.limit(max_results + 1)
            rows = conn.execute(query).all()
        token = None
        if max_results and len(rows) > max_results:
            rows = rows[:max_results]
            token = _encode_token(offset + max_results)
        return [_metric_json(m.key, m.value, m.is_nan, m.timestamp, m.step) for m in rows], token

    # --- search -------------------------------------------------------------------------

    def search_runs(
        self,
        experiment_ids: Sequence[Any],
        filter_string: str | None = None,
        view_type: str = "ACTIVE_ONLY",
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        if max_results > MAX_SEARCH_RESULTS:
            raise TrackingError(
                f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at most {MAX_SEARCH_RESULTS}"
            )
        clauses = parse_filter(filter_string)
        orders = parse_order_by(order_by)
        offset = _decode_token(page_token)
        exp_ids = [self._exp_id(e) for e in experiment_ids]
        query = sa.select(runs).where(runs.c.experiment_id.in_(exp_ids))
        if view_type == "ACTIVE_ONLY":
            query = query.where(runs.c.lifecycle_stage == "active")
        elif view_type == "DELETED_ONLY":
            query = query.where(runs.c.lifecycle_stage == "deleted")
        for clause in clauses:
            query = query.where(_condition(clause))
        order_cols: list[Any] = []
        for n, ob in enumerate(orders):
            col, query = _order_column(query, ob, n)
            # runs without the metric/param/tag sort last whichever the direction, as in MLflow
            order_cols.append(sa.case((col.is_(None), 1), else_=0))
            order_cols.append(col.asc() if ob.ascending else col.desc())
        if not any(ob.entity == "attribute" and ob.key == "start_time" for ob in orders):
            order_cols.append(runs.c.start_time.desc())
        order_cols.append(runs.c.run_uuid.asc())
        query = query.order_by(*order_cols).offset(offset).limit(max_results + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            page = self._runs_json(conn, rows[:max_results])
        token = _encode_token(offset + max_results) if len(rows) > max_results else None
        return page, token

    # --- logged models (MLflow 3) ----------------------------------------------------------

    def create_logged_model(self, experiment_id: Any, document: dict[str, Any]) -> dict[str, Any]:
        exp = self.get_experiment(experiment_id)
        model_id = f"m-{uuid.uuid4().hex}"
        ts = now_ms()
        info = {
            **document,
            "model_id": model_id,
            "experiment_id": exp["experiment_id"],
            "artifact_uri": f"{exp['artifact_location'].rstrip('/')}/models/{model_id}/artifacts",
            "creation_timestamp_ms": ts,
            "last_updated_timestamp_ms": ts,
            "status": document.get("status") or "LOGGED_MODEL_PENDING",
            "lifecycle_stage": "active",
        }
        info.setdefault("name", model_id)
        with self._write() as conn:
            conn.execute(
                logged_models.insert().values(
                    model_id=model_id,
                    experiment_id=int(exp["experiment_id"]),
                    source_run_id=info.get("source_run_id"),
                    document=json.dumps(info),
                )
            )
        return info

    def get_logged_model(self, model_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(logged_models.c.document).where(logged_models.c.model_id == model_id)).first()
        if row is None:
            raise not_found(f"Logged model with ID '{model_id}' not found.")
        doc: dict[str, Any] = json.loads(row.document)
        return doc

    def update_logged_model(self, model_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._write() as conn:
            row = conn.execute(sa.select(logged_models.c.document).where(logged_models.c.model_id == model_id)).first()
            if row is None:
                raise not_found(f"Logged model with ID '{model_id}' not found.")
            doc = json.loads(row.document)
            for key, value in changes.items():
                if key in ("tags", "params"):
                    merged = {d["key"]: d.get("value") for d in doc.get(key, [])}
                    merged.update({d["key"]: d.get("value") for d in value})
                    doc[key] = [{"key": k, "value": v} for k, v in merged.items()]
                else:
                    doc[key] = value
            doc["last_updated_timestamp_ms"] = now_ms()
            conn.execute(
                logged_models.update().where(logged_models.c.model_id == model_id).values(document=json.dumps(doc))
            )
        return doc  # type: ignore[no-any-return]

    def search_logged_models(self, experiment_ids: Sequence[Any]) -> list[dict[str, Any]]:
        ids = [self._exp_id(e) for e in experiment_ids]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(logged_models.c.document).where(logged_models.c.experiment_id.in_(ids))).all()
        return [json.loads(r.document) for r in rows]

    # --- bulk access for the CLI ------------------------------------------------------------

    def all_experiments(self) -> list[dict[str, Any]]:
        return self.search_experiments("ALL", max_results=MAX_SEARCH_RESULTS)[0]


def _condition(clause: Clause) -> Any:
    if clause.entity == "attribute":
        col = (
            runs.c.run_uuid
            if clause.key == "run_id"
            else runs.c.name
            if clause.key == "run_name"
            else runs.c[clause.key]
        )
        return _compare(col, clause.op, clause.value)
    table = {"metric": latest_metrics, "param": params, "tag": tags}[clause.entity]
    sub = sa.select(sa.literal(1)).where(table.c.run_uuid == runs.c.run_uuid, table.c.key == clause.key)
    if clause.entity == "metric":
        sub = sub.where(table.c.is_nan.is_(False))
    return sa.exists(sub.where(_compare(table.c.value, clause.op, clause.value)))


def _compare(col: Any, op: str, value: Any) -> Any:
    if op == "=":
        return col == value
    if op == "!=":
        return col != value
    if op == ">":
        return col > value
    if op == ">=":
        return col >= value
    if op == "<":
        return col < value
    if op == "<=":
        return col <= value
    if op == "LIKE":
        return col.like(value)
    if op == "ILIKE":
        return sa.func.lower(col).like(sa.func.lower(value))
    if op == "IN":
        return col.in_(list(value))
    if op == "NOT IN":
        return col.not_in(list(value))
    raise TrackingError(f"Invalid comparator '{op}'")


def _order_column(query: Any, ob: OrderBy, n: int) -> tuple[Any, Any]:
    if ob.entity == "attribute":
        key = {"run_id": "run_uuid", "run_name": "name"}.get(ob.key, ob.key)
        return runs.c[key], query
    table = {"metric": latest_metrics, "param": params, "tag": tags}[ob.entity].alias(f"order_{n}")
    query = query.outerjoin(table, sa.and_(table.c.run_uuid == runs.c.run_uuid, table.c.key == ob.key))
    return table.c.value, query


def _encode_token(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.b64decode(token))["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError
        return offset
    except Exception:
        raise TrackingError(f"Invalid page token, could not base64-decode: {token[:40]!r}") from None


_ADJECTIVES = (
    "amber",
    "bold",
    "calm",
    "dapper",
    "eager",
    "fancy",
    "gentle",
    "honest",
    "keen",
    "lucid",
    "merry",
    "nimble",
)
_NOUNS = ("otter", "heron", "lynx", "moth", "panda", "quail", "robin", "seal", "trout", "wren", "yak", "zebra")


def _random_name() -> str:
    """A readable run name as MLflow gives (`adjective-noun-number`)."""
    n = uuid.uuid4().int
    return f"{_ADJECTIVES[n % 12]}-{_NOUNS[(n >> 8) % 12]}-{(n >> 16) % 1000}"
