"""mlp.webhooks."""
