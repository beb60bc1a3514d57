"""Errors that end a run with a one-line message instead of a traceback."""


class ClusterimgError(Exception):
    """A fatal, user-facing error. ``exit_code`` 2 means bad arguments or input."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ImageReadError(Exception):
    """One file could not be decoded; the message is the one-line reason shown to the user."""
