"""mlp.cli."""
