"""Errors that end a run with a one-line message instead of a traceback."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ClusterimgError(Exception):
    """A fatal, user-facing error. ``exit_code`` 2 means bad arguments or input."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ImageReadError(Exception):
    """One file could not be decoded; the message is the one-line reason shown to the user."""


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``, or ClusterimgError (exit 2) with one line:
    "<what> not found: <path>" or "cannot read <what> <path>: <reason>"."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterimgError(f"{what} not found: {path}", exit_code=2)
    except (OSError, ValueError) as e:  # ValueError: bad UTF-8 or bad JSON
        raise ClusterimgError(f"cannot read {what} {path}: {str(e).splitlines()[0]}", exit_code=2)
