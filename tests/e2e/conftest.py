"""Fixtures of the end-to-end tests; the helpers live in e2e_support.py.

Tests import helpers from ``e2e_support`` rather than ``conftest``: several test folders have a
conftest.py, and ``from conftest import ...`` picks whichever was imported first.
"""

from e2e_support import fixture_data  # noqa: F401 - re-exported as a pytest fixture
