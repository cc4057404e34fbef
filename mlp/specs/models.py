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
    custom: CustomRuntime | None = None
    versions: list[ModelVersion] = Field(min_length=1)

    @model_validator(mode="after")
    def _custom_needs_runtime(self) -> ModelSpec:
        if self.framework is Framework.custom and (
            self.custom is None or not (self.custom.image or self.custom.modelClass)
        ):
            raise ValueError("framework 'custom' needs custom.image or custom.modelClass")
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


class FeatureSource(Strict):
    kind: Literal["parquet", "csv", "bigquery", "snowflake", "postgres", "kafka"]
    uri: str
    timestampField: str | None = None


class FeatureViewSpec(Strict):
    entities: list[Name] = Field(min_length=1)
    source: FeatureSource
    features: list[Field_] = Field(min_length=1)
    ttl: Duration | None = None
    online: bool = True


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
    runs: list[Run] = Field(default_factory=list)


class Experiment(Strict):
    apiVersion: Literal["mlp.dev/v1"]
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: ExperimentSpec


# --- Monitor -----------------------------------------------------------------------------


class Drift(Strict):
    detector: Literal["ks", "mmd", "chi2", "psi", "tabular"] = "ks"
    features: list[str] = Field(default_factory=list, description="Inputs to watch; empty means all.")
    threshold: float = Field(default=0.05, gt=0, le=1, description="p-value (ks, mmd, chi2) or PSI bound")
    window: Annotated[int, Field(ge=10, le=INT32_MAX)] = 1000
    reference: str | None = Field(default=None, description="URI of the reference sample")


class PerformanceCheck(Strict):
    metric: str
    min: float | None = None
    max: float | None = None
    labels: str | None = Field(default=None, description="URI where delayed ground-truth labels arrive")


class Alert(Strict):
    severity: Literal["info", "warning", "critical"] = "warning"
    for_: Annotated[Duration, Field(alias="for")] = "5m"
    route: str | None = None


class MonitorSpec(Strict):
    model: Name
    environments: list[Name] = Field(default_factory=list, description="Empty: every environment deploying it.")
    schedule: CronSchedule = Field(default="*/15 * * * *", description="Cron schedule of the check")
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
    role: Literal["owner", "maintainer", "member"] = "member"
    email: str | None = None


class TeamSpec(Strict):
    members: list[Member] = Field(min_length=1)


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


class Analysis(Strict):
    metric: str = "error-rate"
    max: float | None = None
    min: float | None = None
    interval: Duration = "5m"


class Canary(Strict):
    version: Version
    steps: list[Percent] = Field(min_length=1)
    traffic: Percent | None = Field(default=None, description="Current share; defaults to the first step")
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
