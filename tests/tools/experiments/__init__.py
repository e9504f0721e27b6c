"""Tests of tools/experiments/."""
