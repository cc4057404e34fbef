"""Wiring for the local runtime (`mlp up`): a driver over the runtime's own metrics and the repository.

Kept apart from `mlp.cli.up` so the CLI only adds one hook; the driver's positions feed the
engine's resolve stage, so the router's split is the rendered one. (Kubernetes: `mlp.rollouts.kube`.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlp.rollouts.driver import RolloutDriver, RolloutMetrics
from mlp.rollouts.gitops import HostConfig, make_writeback
from mlp.rollouts.providers import LocalProvider, PrometheusProvider, Provider
from mlp.rollouts.store import RolloutStore
from mlp.serving.runtime import Runtime
from mlp.specs.models import Analysis


def local_driver(
    runtime: Runtime,
    state_dir: Path,
    repo_dir: Path,
    *,
    host: HostConfig | None = None,
    echo: Callable[[str], None] | None = None,
) -> RolloutDriver:
    local = LocalProvider(runtime)
    prometheus: dict[str, PrometheusProvider] = {}

    def provider(analysis: Analysis) -> Provider:
        # the driver declares analyses resolved against the environment (provider and URL filled in)
        if analysis.provider == "prometheus" and analysis.prometheus is not None:
            url = analysis.prometheus.url
            if url not in prometheus:
                prometheus[url] = PrometheusProvider(url)
            return prometheus[url]
        return local

    return RolloutDriver(
        RolloutStore(state_dir),
        provider,
        writeback=make_writeback(repo_dir, host),
        metrics=RolloutMetrics(runtime.metrics.registry),
        echo=echo,
    )


__all__ = ["HostConfig", "local_driver"]
