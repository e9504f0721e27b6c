"""The tools' bad-input contract, checked in one place: one ``error:`` line on stderr and exit status 2."""

import pytest


def one_error_line(main, argv, capsys) -> str:
    """Run ``main(argv)``, which must exit with status 2 after printing one ``error: ...`` line; returns it."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
