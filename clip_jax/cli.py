"""How every command-line entry point reports errors.

A user's mistake (a bad config key or value, a missing file, a mesh/batch mismatch, an unknown
preset, a workdir in use) is one line on stderr, ``error: ...``, plus a hint line, and exit code
2. An operational failure the user must act on (a checkpoint that cannot be written) is one line
and exit code 1. Anything else is a bug: the full traceback, exit code 1. ``--verbose`` adds the
traceback to the first two kinds as well.

    def main(argv): ...            # raises; returns an exit code or None
    if __name__ == "__main__":
        cli.run(main)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says what to change."""


class RunError(RuntimeError):
    """The run cannot go on (e.g. a checkpoint save failed); the message names the cause.

    ``exit_now``: leave without waiting for the interpreter's shutdown (set when library
    threads are known to be stuck, e.g. orbax's on a failed commit, which wait 300 s)."""

    exit_now = False


# What counts as the user's mistake. ValueError/FileNotFoundError are what the library raises for
# bad configs, paths and specs (it checks its inputs and says so in the message); a programming
# error of that type still has its traceback one ``--verbose`` away.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (``KeyError`` quotes its message: unquote it)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(
        e.args[0], str) else str(e)
    msg = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    return msg or type(e).__name__


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
        stderr=None) -> int:
    """Call ``main(argv)`` and turn what it raises into a message and an exit code (returned,
    and passed to ``sys.exit`` by the caller)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    err = stderr or sys.stderr
    hint = "" if verbose else " (--verbose shows the traceback)"
    try:
        code = main(argv)
    except SystemExit as e:  # argparse and sys.exit(msg) inside the library
        if isinstance(e.code, str):
            print(f"error: {one_line(Exception(e.code))}", file=err)
            return 2
        return 0 if e.code is None else int(e.code)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except RunError as e:
        if verbose:
            traceback.print_exc(file=err)
        print(f"error: {one_line(e)}{hint}", file=err)
        if e.exit_now:
            for stream in (sys.stdout, sys.stderr, err):
                stream.flush()
            os._exit(1)
        return 1
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc(file=err)
        print(f"error: {one_line(e)}{hint}", file=err)
        return 2
    return int(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with a ``--verbose`` flag and one-line usage errors (exit code 2)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true",
                          help="print the full traceback on errors")

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
