"""mlp.specs."""
