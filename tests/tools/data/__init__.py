"""Tests of tools/data/ (tests/tools/data/test_<module>.py for tools/data/<module>.py)."""
