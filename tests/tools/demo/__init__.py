"""Tests of tools/demo/ (test_run.py, test_report.py; test_e2e.py runs the --quick demo)."""
