"""User-facing errors: one line that names the problem and the fix.

The CLI prints these without a traceback (unless HYDRA_FULL_ERROR=1); anything
else that escapes is a bug and keeps its traceback.
"""


class C2IRError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class NotFittedError(C2IRError):
    """A detector was asked to score before `fit` was called."""
