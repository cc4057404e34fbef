"""mlp.targets."""
