"""Experiments outside the training loop (docs/toy_regression.md)."""
