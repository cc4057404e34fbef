"""mlp.sources."""
