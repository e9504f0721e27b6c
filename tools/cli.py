"""The tools' command-line convention: bad input is one ``error:`` line and exit status 2."""

import argparse
import sys

from megatron_patch.errors import ArgumentError


class ToolParser(argparse.ArgumentParser):
    """argparse with its complaints raised as :class:`ArgumentError` (:func:`run_tool` prints them)."""

    def error(self, message):
        raise ArgumentError(message)


def run_tool(main_function, argv=None):
    """``main_function(argv)`` (default: the command line), with an :class:`ArgumentError` as one line."""
    try:
        return main_function(sys.argv[1:] if argv is None else list(argv))
    except ArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
