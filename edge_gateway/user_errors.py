"""Mistakes a user can fix, and an argument parser that reports them on one line.

The CLIs turn every `UserError` (and the OS and network errors a mistyped flag causes) into one
line on stderr and a non-zero exit status: a traceback tells a user nothing they can act on.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

# Exit status for a usage mistake (argparse's), and for anything else the user can fix.
USAGE = 2
FAILED = 1


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and how to fix it."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (with a pointer to --help), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: object, status: int = FAILED) -> int:
    """Print `message` as one line on stderr; return the exit status."""
    text = " ".join(str(message).split())  # one line, whatever the exception's text held
    sys.stderr.write(f"{prog}: error: {text}\n")
    return status
