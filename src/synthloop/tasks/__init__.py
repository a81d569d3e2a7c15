"""Tasks: prompt sources with their verifiers and evaluation metrics."""
