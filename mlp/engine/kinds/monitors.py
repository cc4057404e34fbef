"""Monitors: the kinds their package templates produce (rendered by `mlp.render` for now)."""

from __future__ import annotations

from mlp.engine.plugins import KindPlugin, register

PLUGIN = register(
    KindPlugin(
        "monitors",
        owned_kinds={
            "kubernetes": [
                ("v1", "ConfigMap"),
                ("apps/v1", "Deployment"),
                ("v1", "Service"),
                ("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule"),
            ]
        },
    )
)
