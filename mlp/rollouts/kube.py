"""Rollouts on Kubernetes targets: the controller's driver, metrics from Prometheus.

Traffic moves through the engine like every other change: the driver's positions enter
the resolve stage (`mlp.engine.reconcile(..., positions=...)`), render writes the canary's
weight into the desired objects, and the controller's normal apply moves it, so there is one
writer and the idle drift check sees the position it applied:

- Serverless (Knative) mode: the one InferenceService names the canary's `storageUri` with
  `spec.predictor.canaryTrafficPercent` at the rollout's weight; KServe sends the rest to the
  previously rolled-out revision and reports the split in `status.components.predictor.traffic`
  (the controller records it as the model's observed traffic). Promoted: the field goes (100%
  to the canary's revision); rolled back: the stable version's `storageUri` again, so the
  canary gets 0%.
- Standard (RawDeployment) mode: the stable version keeps `<model>`, the canary runs as
  `<model>-canary`, and the HTTPRoute `<model>` carries both weights; promoted, `<model>` serves
  the canary's version at 100%; rolled back, the route sends 100% to the stable version.

Analysis reads Prometheus' HTTP API (`spec.serving.prometheus.url` of the environment, or the
canary's own `analysis.prometheus.url`; `mlp validate` refuses a canary with neither). A
Prometheus that does not answer pauses the rollout at its step with the reason; it never
promotes on missing data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlp.rollouts.analysis import Sample, Window
from mlp.rollouts.driver import RolloutDriver, RolloutMetrics
from mlp.rollouts.gitops import HostConfig, make_writeback
from mlp.rollouts.providers import PrometheusProvider, Provider
from mlp.rollouts.store import RolloutStore
from mlp.specs.models import Analysis, AnalysisCheck


class NoPrometheus:
    """The provider of a canary whose environment declares no Prometheus (a spec `mlp validate`
    refuses): always no data, so such a rollout pauses rather than promotes."""

    def mark(self, model: str, versions: tuple[str, str]) -> None:
        return None

    def window(
        self, model: str, stable: str, canary: str, mark: Any, seconds: float, checks: list[AnalysisCheck]
    ) -> Window:
        return Window(
            Sample(),
            Sample(),
            error="no Prometheus declared: set spec.serving.prometheus.url of the environment "
            "(or the canary's analysis.prometheus.url)",
        )


def kube_driver(
    state_dir: Path,
    repo_dir: Path | None,
    *,
    host: HostConfig | None = None,
    git_env: dict[str, str] | None = None,
    registry: Any = None,
    echo: Callable[[str], None] | None = None,
) -> RolloutDriver:
    """The controller's rollout driver: Prometheus analysis, state in `state_dir`, reverts in `repo_dir`.

    `repo_dir` is the repository the controller reads (its bare mirror or a working copy); the
    revert branch is pushed to its `origin` with `git_env` (the source's credentials)."""
    prometheus: dict[str, PrometheusProvider] = {}
    missing = NoPrometheus()

    def provider(analysis: Analysis) -> Provider:
        if analysis.prometheus is None:
            return missing
        url = analysis.prometheus.url
        if url not in prometheus:
            prometheus[url] = PrometheusProvider(url)
        return prometheus[url]

    return RolloutDriver(
        RolloutStore(state_dir),
        provider,
        writeback=make_writeback(repo_dir, host, git_env) if repo_dir is not None else None,
        metrics=RolloutMetrics(registry) if registry is not None else None,
        echo=echo,
    )
