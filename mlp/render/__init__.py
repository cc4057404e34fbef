"""mlp.render."""
