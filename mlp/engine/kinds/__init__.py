"""The built-in kind plug-ins; importing this package registers them."""

from mlp.engine.kinds import deployments, monitors

__all__ = ["deployments", "monitors"]
