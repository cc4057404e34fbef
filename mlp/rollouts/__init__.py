"""Progressive delivery: canary rollouts on metrics, A/B statistics, shadows and Git write-back."""
