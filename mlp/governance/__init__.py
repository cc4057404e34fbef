"""mlp.governance."""
