"""Fixtures of the end-to-end tests; the helpers behind them live in tests/helpers/e2e.py."""

import pytest

from tests.helpers.e2e import Reference, Run, build_fixture_data


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory):
    """The manifest of a per-domain .bin/.idx dataset and tokenizer built from the committed fixtures."""
    return build_fixture_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def launch():
    """``launch(args, **env)`` starts a :class:`tests.helpers.e2e.Run`; runs a failed test left
    running are killed."""
    runs = []

    def start(args, **env):
        runs.append(Run(args, **env))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill()


@pytest.fixture(scope="session")
def reference(fixture_data, tmp_path_factory):
    """The uninterrupted run the chains of test_resume.py and test_exits.py are compared with
    (:class:`tests.helpers.e2e.Reference`): one for the session, trained beside the first chain."""
    ref = Reference(fixture_data, tmp_path_factory.mktemp("reference"))
    yield ref
    ref.stop()
