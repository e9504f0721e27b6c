"""Tests of tools/, laid out like it: tests/tools/test_<tool>.py for the data tools at the top,
tests/tools/<subpackage>/test_<module>.py for tools/<subpackage>/<module>.py. Shared helpers:
``tests.tools.helpers``; shared fixtures: tests/tools/conftest.py."""
