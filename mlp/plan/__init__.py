"""mlp.plan."""
