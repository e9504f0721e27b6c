"""The one error users see: a bad flag, file or combination, as one ``error:`` line.

Every start-up check raises :class:`ArgumentError` with a message that names the flag (or file)
and what to change; the entry points print it as ``error: ...`` once and exit with status 2.
"""


class ArgumentError(ValueError):
    """A bad flag value, file or combination; the message names the flag and what to change."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception as one short line (error messages stay one line whatever a library raised)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:limit]}"


def require_module(name: str, needed_for: str):
    """``import name``, or one line naming what needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ArgumentError(f"{needed_for} needs the {name} package; pip install "
                            "'megatron-reweighting[tokenizers]' (or -r requirements-cpu.txt)") from None
