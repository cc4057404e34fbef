"""mlp.monitors."""
