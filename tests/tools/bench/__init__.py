"""Tests of tools/bench/ (tests/tools/bench/test_<module>.py for tools/bench/<module>.py)."""
