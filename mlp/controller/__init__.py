"""mlp.controller."""
