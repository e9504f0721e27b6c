"""One-line errors: whatever a library raised, the user sees one short line."""

import pytest

from megatron_patch.errors import one_line

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_one_line_folds_and_cuts_a_library_message():
    err = RuntimeError("INTERNAL: could not parse\n  ModelProto from\tfile.model " + "x" * 500)
    line = one_line(err, limit=60)
    assert line.startswith("RuntimeError: INTERNAL: could not parse ModelProto from file.model")
    assert "\n" not in line and len(line) == len("RuntimeError: ") + 60

