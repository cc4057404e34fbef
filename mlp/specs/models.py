"""The declared world: one pydantic model per spec kind.

Every document has `apiVersion: mlp.dev/v1`, `kind`, `metadata.name` (a DNS-1123 label)
and a `spec`. Unknown fields are errors everywhere (`extra="forbid"`), so a typo never
silently does nothing. Cross-references between documents are checked in
`mlp.specs.checks`, not here: a model validates on its own.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from mlp.specs.units import INT32_MAX, INT64_MAX, parse_cron, parse_duration, parse_quantity, parse_timezone

API_VERSION = "mlp.dev/v1"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Services and KServe InferenceServices need a leading letter (DNS-1035).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"

Name = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
Percent = Annotated[int, Field(ge=0, le=100)]
# Integers are bounded by what stores them: versions by SQLite's int64, replica counts and the
# like by the Kubernetes int32 fields they become.
Version = Annotated[int, Field(ge=1, le=INT64_MAX)]


def _quantity(value: str | int | float) -> str | int | float:
    parse_quantity(value)
    return value


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _cron(value: str) -> str:
    parse_cron(value)
    return value


def _timezone(value: str) -> str:
    parse_timezone(value)
    return value


Quantity = Annotated[
    str | int | float,
    AfterValidator(_quantity),
    Field(description="Kubernetes quantity, e.g. 500m, 2, 512Mi, 1Gi (kubernetes.utils.parse_quantity)"),
]
Duration = Annotated[
    str,
    AfterValidator(_duration),
    Field(pattern=r"^(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?$", description="e.g. 30s, 15m, 4h, 2d, 2h30m"),
]
CronSchedule = Annotated[
    str, AfterValidator(_cron), Field(description="Cron schedule: five fields or @hourly/@daily/@weekly/...")
]
TimeZone = Annotated[str, AfterValidator(_timezone), Field(description="IANA time zone, e.g. Europe/Paris")]


class Strict(BaseModel):
    # strict=True: no lax coercion ("1" -> 1, "yes" -> True, "0.9" -> 0.9), so a spec that
    # validates here also validates against the exported JSON Schemas editors and CI use.
    # Enums stay lax (Field(strict=False)): YAML gives strings, strict would want Enum instances.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False, strict=True)


class Metadata(Strict):
    name: Name
    team: Name | None = None
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# --- Model -------------------------------------------------------------------------------


class Framework(str, Enum):
    sklearn = "sklearn"
    xgboost = "xgboost"
    lightgbm = "lightgbm"
    onnx = "onnx"
    pytorch = "pytorch"
    tensorflow = "tensorflow"
    custom = "custom"


class DataType(str, Enum):
    float = "float"
    double = "double"
    int = "int"
    long = "long"
    bool = "bool"
    string = "string"
    bytes = "bytes"


class Field_(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)]
    type: Annotated[DataType, Field(strict=False)]
    shape: list[Annotated[int, Field(ge=-1, le=INT64_MAX)]] | None = Field(
        default=None, description="Per-example shape; -1 for a variable axis."
    )
    description: str | None = None


class Signature(Strict):
    inputs: list[Field_] = Field(min_length=1)
    outputs: list[Field_] = Field(min_length=1)


class Lineage(Strict):
    run: str | None = None
    experiment: Name | None = None
    dataset: str | None = None
    datasetDigest: str | None = Field(default=None, description="Digest of the training dataset as the run logged it.")
    commit: str | None = None
    trainedAt: str | None = None


class ModelVersion(Strict):
    version: Version
    uri: str = Field(description="Artifact location: s3://, gs://, azure://, https://, pvc://, oci:// or file:///.")
    digest: Annotated[str, Field(pattern=DIGEST_PATTERN)]
    format: str | None = Field(default=None, description="Artifact format when not implied: joblib, json, ubj, onnx.")
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage | None = None
    stage: Literal["candidate", "production", "archived"] | None = None


class CustomRuntime(Strict):
    image: str | None = Field(default=None, description="Container image for Kubernetes.")
    modelClass: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:Class, a kserve.Model subclass"
    )
    args: list[str] = Field(default_factory=list)


class ModelSpec(Strict):
    framework: Annotated[Framework, Field(strict=False)]
    signature: Signature
    features: Name | None = Field(default=None, description="FeatureView the model reads its inputs from.")
    enrichFromFeatures: bool = Field(
        default=False,
        description="Serving: a request may carry only the entity keys; the data plane fills the other "
        "inputs from the online store of `features` before calling the model.",
    )
    custom: CustomRuntime | None = None
    versions: list[ModelVersion] = Field(min_length=1)

    @model_validator(mode="after")
    def _custom_needs_runtime(self) -> ModelSpec:
        if self.framework is Framework.custom and (
            self.custom is None or not (self.custom.image or self.custom.modelClass)
        ):
            raise ValueError("framework 'custom' needs custom.image or custom.modelClass")
        if self.enrichFromFeatures and (self.features is None or self.framework is Framework.custom):
            raise ValueError("enrichFromFeatures needs features (a FeatureView) and a native framework")
        return self

    def version(self, number: int) -> ModelVersion | None:
        return next((v for v in self.versions if v.version == number), None)


class Model(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Model"]
    metadata: Metadata
    spec: ModelSpec


# --- Features ----------------------------------------------------------------------------


class EntitySpec(Strict):
    joinKeys: list[str] = Field(min_length=1)
    valueType: Annotated[DataType, Field(strict=False)] = DataType.string


class Entity(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Entity"]
    metadata: Metadata
    spec: EntitySpec


SOURCE_FILE_KINDS = ("parquet", "csv", "jsonl", "avro")


class FeatureSource(Strict):
    """Where a feature view's rows come from (read by `mlp.features.sources`).

    File kinds take `path` (a repository-relative file, folder of files of that kind, or glob)
    or `uri` (`s3://bucket/prefix`); `sql` takes `query`: one DuckDB SELECT over repository
    files (`SELECT ... FROM read_parquet('data/x.parquet')`); `postgresql` takes `query` (one
    PostgreSQL SELECT, run read-only) and `connectionEnv`, the environment variable holding
    the connection string (credentials stay out of Git)."""

    kind: Literal["parquet", "csv", "jsonl", "avro", "sql", "postgresql"]
    path: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    uri: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$", max_length=1024)] | None = None
    query: Annotated[str, Field(min_length=1, max_length=20000)] | None = None
    connectionEnv: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)] | None = Field(
        default=None,
        description="postgresql: environment variable holding the libpq connection string or URL "
        "(e.g. set from a Secret); never the connection string itself",
    )
    timestampField: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)] = Field(
        default="event_timestamp", description="Event-timestamp column: when each row's values became true."
    )

    @model_validator(mode="after")
    def _one_location(self) -> FeatureSource:
        given = [k for k in ("path", "uri", "query") if getattr(self, k) is not None]
        if self.kind in ("sql", "postgresql") and given != ["query"]:
            raise ValueError(f"a {self.kind} source takes query (and no path or uri)")
        if (self.kind == "postgresql") != (self.connectionEnv is not None):
            raise ValueError("connectionEnv is for postgresql sources, and a postgresql source needs it")
        if self.kind not in ("sql", "postgresql") and given not in (["path"], ["uri"]):
            raise ValueError(f"a {self.kind} source takes one of path or uri")
        if self.path is not None:
            parts = self.path.replace("\\", "/").split("/")
            if self.path.startswith("/") or ".." in parts or "://" in self.path or "\0" in self.path:
                raise ValueError("path must stay inside the repository (relative, no '..')")
        return self


class FeatureViewSpec(Strict):
    entities: list[Name] = Field(min_length=1)
    source: FeatureSource
    features: list[Field_] = Field(min_length=1)
    ttl: Duration | None = Field(
        default=None, description="Oldest value a lookup may return, relative to the entity row's time."
    )
    online: bool = Field(default=True, description="Materialize into the online store and serve lookups.")

    @model_validator(mode="after")
    def _unique_features(self) -> FeatureViewSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {', '.join(dupes)}")
        if self.source.timestampField in names:
            raise ValueError(f"{self.source.timestampField!r} is the timestamp field, not a feature")
        for f in self.features:
            if f.shape is not None:
                raise ValueError(f"feature {f.name!r}: features are scalars (no shape)")
        return self


class FeatureView(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["FeatureView"]
    metadata: Metadata
    spec: FeatureViewSpec


# --- Experiment --------------------------------------------------------------------------


class Objective(Strict):
    metric: str
    goal: Literal["maximize", "minimize"] = "maximize"


class Run(Strict):
    id: str
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    modelVersion: int | None = Field(default=None, ge=1, le=INT64_MAX, description="Model version this run produced.")


class ExperimentSpec(Strict):
    model: Name
    objective: Objective
    dataset: str | None = None
    mlflowExperiment: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Name of the tracking (MLflow) experiment whose runs belong here; default: metadata.name.",
    )
    baseline: int | None = Field(
        default=None, ge=1, description="Model version runs are ranked against; default: the newest version."
    )
    runs: list[Run] = Field(default_factory=list)


class Experiment(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: ExperimentSpec


# --- Monitor -----------------------------------------------------------------------------


class Reference(Strict):
    uri: str = Field(description="Parquet file of the reference sample (one column per watched feature).")
    digest: Annotated[str, Field(pattern=DIGEST_PATTERN)] = Field(
        description="sha256 of that file; refused on mismatch"
    )


class Drift(Strict):
    detector: Literal["ks", "mmd", "chi2", "psi", "tabular"] = Field(
        default="ks",
        description="ks: numeric features; chi2: categorical ones; tabular: KS or Chi-squared per feature "
        "(categorical ones named in `categorical`); mmd: multivariate (needs a TensorFlow/PyTorch/KeOps "
        "backend for alibi-detect); psi: population stability index, computed by mlp.",
    )
    features: list[str] = Field(default_factory=list, description="Inputs to watch; empty means all.")
    categorical: list[str] = Field(default_factory=list, description="Features that are categories (chi2/tabular).")
    threshold: float = Field(default=0.05, gt=0, le=1, description="p-value (ks, mmd, chi2, tabular) or PSI bound")
    correction: Literal["bonferroni", "fdr"] = Field(
        default="bonferroni", description="alibi-detect's multiple-testing correction across features"
    )
    window: Annotated[int, Field(ge=10, le=INT32_MAX)] = Field(
        default=1000, description="Rows per window; with windowDuration, the fewest rows a window is tested with"
    )
    windowDuration: Annotated[str, Field(pattern=r"^\d+[smh]$")] | None = Field(
        default=None, description="Window by time (e.g. 5m) instead of by row count"
    )
    reference: Reference = Field(description="The reference sample (e.g. the training data), with its digest")

    @model_validator(mode="after")
    def _categorical_watched(self) -> Drift:
        unknown = [c for c in self.categorical if self.features and c not in self.features]
        if unknown:
            raise ValueError(f"categorical features {unknown} are not in features")
        if self.detector in ("ks", "psi", "mmd") and self.categorical:
            raise ValueError(f"detector {self.detector} takes numeric features only; use chi2 or tabular")
        return self


PerfMetric = Literal["accuracy", "auc", "f1", "rmse", "mae"]


class PerformanceCheck(Strict):
    metric: PerfMetric
    min: float | None = None
    max: float | None = None
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="Alert when the window's metric is worse than the deployed version's recorded "
        "metrics[metric] by more than this",
    )
    minLabels: Annotated[int, Field(ge=1)] = Field(default=50, description="Labelled rows a window needs")
    labels: str | None = Field(
        default=None,
        description="Parquet file or folder of delayed labels (request_id, outcome); default: the feedback endpoint's",
    )

    @model_validator(mode="after")
    def _a_bound(self) -> PerformanceCheck:
        if self.min is None and self.max is None and self.tolerance is None:
            raise ValueError("a performance check needs min, max or tolerance")
        return self


class Receiver(Strict):
    type: Literal["webhook", "slack", "alertmanager"] = Field(
        description="webhook: generic JSON; slack: Slack-compatible {text: ...}; alertmanager: POST /api/v2/alerts"
    )
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]


class Alert(Strict):
    severity: Literal["info", "warning", "critical"] = "warning"
    for_: Annotated[Duration, Field(alias="for")] = "5m"
    route: str | None = Field(default=None, description="Alertmanager `route` label (Kubernetes)")
    receiver: Receiver | None = Field(
        default=None, description="Local target: where `mlp up` sends fire and resolve notifications"
    )


class MonitorSpec(Strict):
    model: Name
    environments: list[Name] = Field(default_factory=list, description="Empty: every environment deploying it.")
    schedule: CronSchedule = Field(default="*/15 * * * *", description="Cron schedule of the check (UTC)")
    payloadLog: str | None = Field(
        default=None,
        description="Kubernetes environments: where the model's payload log lives (s3://bucket/prefix or "
        "file:///dir; `{environment}` is replaced by the environment's name). Local environments read `mlp up`'s own.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Kubernetes: the image running `mlp monitor run` (default mlp:VERSION)",
    )
    predictionDrift: bool = Field(
        default=True, description="Test the outputs against the reference's when a window has no labels"
    )
    drift: Drift | None = None
    performance: list[PerformanceCheck] = Field(default_factory=list)
    alerts: list[Alert] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something_to_watch(self) -> MonitorSpec:
        if self.drift is None and not self.performance:
            raise ValueError("a monitor needs drift or performance checks")
        return self


class Monitor(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Monitor"]
    metadata: Metadata
    spec: MonitorSpec


# --- Team --------------------------------------------------------------------------------


class Member(Strict):
    user: Annotated[str, Field(min_length=1, max_length=255, description="Git hosting username")]
    role: Literal["owner", "maintainer", "member", "viewer", "developer", "approver", "admin"] = Field(
        default="member",
        description="API role in this team: viewer, developer, approver, admin "
        "(owner = admin, maintainer = approver, member = developer)",
    )
    email: str | None = Field(default=None, description="Matches the Kratos identity's `email` trait")
    identity: str | None = Field(default=None, description="Kratos identity id (matched before email and username)")


class TeamSpec(Strict):
    members: list[Member] = Field(min_length=1)
    platform: bool = Field(
        default=False, description="Platform team: its members' roles apply to every team (admins see everything)"
    )


class Team(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Team"]
    metadata: Metadata
    spec: TeamSpec


# --- Environment -------------------------------------------------------------------------


class TargetSpec(Strict):
    kind: Literal["kubernetes", "local"]
    namespace: Name | None = None
    context: str | None = Field(default=None, description="kubeconfig context")
    artifactMirror: str | None = Field(
        default=None, description="local only: repository-relative folder mirroring the object store"
    )

    @model_validator(mode="after")
    def _namespace_for_kubernetes(self) -> TargetSpec:
        if self.kind == "kubernetes" and not self.namespace:
            raise ValueError("a kubernetes target needs a namespace")
        return self


class Approvals(Strict):
    required: Annotated[int, Field(ge=0, le=20)] = 0
    from_: list[Annotated[str, Field(pattern=r"^(team|user):[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list, alias="from", description="team:NAME or user:LOGIN"
    )


class MetricGate(Strict):
    metric: str
    min: float | None = None
    max: float | None = None
    maxRegression: float | None = Field(default=None, ge=0, description="Largest allowed drop versus the incumbent")


class SyncWindow(Strict):
    kind: Literal["allow", "deny"]
    schedule: CronSchedule = Field(description="Cron expression of the window's start, e.g. '0 22 * * 5'")
    duration: Duration
    timezone: TimeZone = "UTC"


class SyncPolicy(Strict):
    automated: bool = True
    prune: bool = False
    selfHeal: bool = False
    windows: list[SyncWindow] = Field(default_factory=list)


class Resources(Strict):
    requests: dict[Literal["cpu", "memory"], Quantity] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "nvidia.com/gpu"], Quantity] = Field(default_factory=dict)


class Autoscaling(Strict):
    minReplicas: Annotated[int, Field(ge=0, le=INT32_MAX)] = 1
    maxReplicas: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1
    metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    target: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.maxReplicas < self.minReplicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        return self


# The checks a rollout's analysis can run, and the direction each threshold takes.
# error-rate: 5xx share 0..1 (max); latency: seconds at `percentile` (max); prediction-shift:
# p-value of a two-sample test between canary and stable outputs (min); accuracy and outcome:
# mean feedback outcome of the canary's answers (min, or max). A custom metric needs a
# PromQL `query` and the prometheus provider.
ANALYSIS_METRICS = ("error-rate", "latency", "prediction-shift", "accuracy", "outcome")


class AnalysisCheck(Strict):
    metric: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$", max_length=63)]
    max: float | None = None
    min: float | None = None
    percentile: float = Field(default=99.0, gt=0, lt=100, description="latency only")
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="PromQL template for a custom metric ({model}, {version}, {namespace}, {window})",
    )

    @model_validator(mode="after")
    def _known(self) -> AnalysisCheck:
        if self.metric == "prediction-shift" and self.max is None and self.min is None:
            self.min = 0.01
        problem = _check_problem(self.metric, self.max, self.min, self.query)
        if problem:
            raise ValueError(problem)
        return self


def _check_problem(metric: str, max_: float | None, min_: float | None, query: str | None) -> str | None:
    if metric not in ANALYSIS_METRICS and query is None:
        return (
            f"unknown analysis metric {metric!r} (known: {', '.join(ANALYSIS_METRICS)}; "
            "a custom metric needs a PromQL query)"
        )
    if max_ is None and min_ is None:
        return f"analysis metric {metric!r} needs a max or a min threshold"
    if metric == "error-rate" and max_ is not None and not 0 <= max_ <= 1:
        return "error-rate max is a share between 0 and 1"
    return None


class PrometheusProvider(Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]


class Analysis(Strict):
    metric: str | None = Field(default=None, description="Shorthand for one check: with max/min")
    max: float | None = None
    min: float | None = None
    interval: Duration = "5m"
    minRequests: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=20, description="Requests the canary must answer in a step before it may advance"
    )
    checks: list[AnalysisCheck] = Field(default_factory=list)
    provider: Literal["local", "prometheus"] | None = Field(
        default=None, description="Where metrics come from; default local for local targets, else prometheus"
    )
    prometheus: PrometheusProvider | None = None

    @model_validator(mode="after")
    def _shorthand(self) -> Analysis:
        if self.metric is None and (self.max is not None or self.min is not None):
            self.metric = "error-rate"
        if self.metric is not None:
            if self.max is None and self.min is None and self.metric == "error-rate":
                self.max = 0.01
            min_ = 0.01 if self.metric == "prediction-shift" and self.max is None and self.min is None else self.min
            problem = _check_problem(self.metric, self.max, min_, None)
            if problem:
                raise ValueError(problem)
            one = AnalysisCheck(metric=self.metric, max=self.max, min=min_)
            if not any(c.metric == one.metric for c in self.checks):
                self.checks = [one, *self.checks]
        if not self.checks:
            self.checks = [AnalysisCheck(metric="error-rate", max=0.01)]
        return self

    def interval_seconds(self) -> float:
        return parse_duration(self.interval).total_seconds()


class Canary(Strict):
    version: Version
    steps: list[Percent] = Field(min_length=1)
    traffic: Percent | None = Field(
        default=None, description="The step a rollout starts at (one of steps); defaults to the first step"
    )
    analysis: Analysis | None = None

    @property
    def current(self) -> int:
        return self.traffic if self.traffic is not None else self.steps[0]


class ABTest(Strict):
    version: Version
    share: Percent = 50
    stickyHeader: str = "x-mlp-key"


class Shadow(Strict):
    version: Version
    percent: Percent = 100


class Deployment(Strict):
    version: Version
    canary: Canary | None = None
    abTest: ABTest | None = None
    shadow: Shadow | None = None
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    resources: Resources = Field(default_factory=Resources)
    batching: bool = True

    @model_validator(mode="after")
    def _one_split(self) -> Deployment:
        if self.canary is not None and self.abTest is not None:
            raise ValueError("a deployment takes a canary or an abTest, not both")
        return self


class OnlineStore(Strict):
    kind: Literal["sqlite", "redis"] = "sqlite"
    path: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="sqlite: repository-relative file [default: .mlp/features/ENV.db]"
    )
    url: Annotated[str, Field(pattern=r"^rediss?://[^\s]+$", max_length=1024)] | None = Field(
        default=None, description="redis: redis://HOST:PORT/DB (no credentials in Git: use a Secret)"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> OnlineStore:
        if self.kind == "redis" and (not self.url or self.path is not None):
            raise ValueError("a redis online store takes url (and no path)")
        if self.kind == "sqlite":
            if self.url is not None:
                raise ValueError("a sqlite online store takes path (and no url)")
            if self.path is not None and (self.path.startswith("/") or ".." in self.path.split("/")):
                raise ValueError("path must stay inside the repository (relative, no '..')")
        if self.url is not None and "@" in self.url.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("no credentials in the url: give them to the runtime, not Git")
        return self


class Materialization(Strict):
    schedule: CronSchedule = Field(
        default="*/15 * * * *", description="Cron schedule (UTC) of `mlp features materialize`"
    )
    views: list[Name] = Field(default_factory=list, description="Feature views to load; empty means every online one.")
    image: str | None = Field(default=None, description="kubernetes: image of the CronJob [default: mlp's own]")


class FeatureStoreConfig(Strict):
    onlineStore: OnlineStore = Field(default_factory=OnlineStore)
    materialize: Materialization | None = None


class GatewayRef(Strict):
    name: Name = Field(description="Gateway API Gateway the HTTPRoutes attach to")
    namespace: Name | None = Field(default=None, description="The Gateway's namespace [default: the route's]")


# KServe's deployment modes; v0.17 renamed Serverless to Knative and RawDeployment to Standard
# and accepts both spellings, earlier versions only the first. The value is written verbatim
# into the `serving.kserve.io/deploymentMode` annotation, so write the one your KServe knows.
SERVERLESS_MODES = ("Serverless", "Knative")
STANDARD_MODES = ("Standard", "RawDeployment")


class ServingSpec(Strict):
    mode: Literal["Serverless", "Knative", "Standard", "RawDeployment"] | None = Field(
        default=None,
        description="KServe deployment mode of this environment's InferenceServices. Serverless (Knative): a "
        "canary is one InferenceService with canaryTrafficPercent. Standard (RawDeployment): a canary "
        "InferenceService beside the stable one and a Gateway API HTTPRoute with the weights. Unset: "
        "no deploymentMode annotation (the cluster default) and Serverless-style canaries. Kubernetes targets "
        "only: a local target's router splits traffic itself.",
    )
    gateway: GatewayRef | None = Field(
        default=None, description="Standard mode only: the Gateway each model's HTTPRoute attaches to"
    )
    prometheus: PrometheusProvider | None = Field(
        default=None,
        description="The Prometheus canary analysis queries unless a canary's analysis names its own (on a "
        "local target it replaces the runtime's own counters as the default provider)",
    )

    @property
    def standard(self) -> bool:
        return self.mode in STANDARD_MODES


class EnvironmentSpec(Strict):
    target: TargetSpec
    tier: Literal["development", "staging", "production"] = "development"
    branch: str = "main"
    promotesFrom: Name | None = None
    approvals: Approvals = Field(default_factory=Approvals)
    gates: list[MetricGate] = Field(default_factory=list)
    sync: SyncPolicy = Field(default_factory=SyncPolicy)
    serviceAccount: Name | None = Field(default=None, description="Service account with storage credentials")
    storageSecret: Name | None = Field(default=None, description="Name of the Secret holding storage credentials")
    deployments: dict[Name, Deployment] = Field(default_factory=dict)
    features: FeatureStoreConfig | None = Field(default=None, description="Online store and materialization schedule")
    serving: ServingSpec | None = Field(
        default=None, description="KServe deployment mode, Gateway and Prometheus of a kubernetes target"
    )

    def analysis_provider(self, analysis: Analysis | None) -> str:
        """Where a canary's metrics come from: as declared, else the environment's Prometheus when it
        names one, else the embedded runtime for local targets (Prometheus for kubernetes ones)."""
        if analysis is not None and analysis.provider is not None:
            return analysis.provider
        if self.target.kind == "local" and (self.serving is None or self.serving.prometheus is None):
            return "local"
        return "prometheus"

    def prometheus_url(self, analysis: Analysis | None) -> str | None:
        """The Prometheus a canary's analysis asks: its own, else the environment's."""
        if analysis is not None and analysis.prometheus is not None:
            return analysis.prometheus.url
        if self.serving is not None and self.serving.prometheus is not None:
            return self.serving.prometheus.url
        return None

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", v) or ".." in v or v.startswith("/"):
            raise ValueError("not a valid branch or tag name")
        return v


class Environment(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Environment"]
    metadata: Metadata
    spec: EnvironmentSpec


KINDS: dict[str, type[Strict]] = {
    "Model": Model,
    "Entity": Entity,
    "FeatureView": FeatureView,
    "Experiment": Experiment,
    "Monitor": Monitor,
    "Team": Team,
    "Environment": Environment,
}

AnySpec = Model | Entity | FeatureView | Experiment | Monitor | Team | Environment


def kind_of(doc: Any) -> str | None:
    """The `kind` of a raw document, or None when it has none."""
    if isinstance(doc, dict):
        kind = doc.get("kind")
        return kind if isinstance(kind, str) else None
    return None
