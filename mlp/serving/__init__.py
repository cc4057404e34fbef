"""mlp.serving."""
