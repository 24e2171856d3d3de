"""The one exception type front ends turn into a one-line message and a non-zero exit."""

from __future__ import annotations


class InstantStyleError(Exception):
    """Bad input or a missing resource. The message is one line: the problem and the fix."""


class ModelNotFoundError(InstantStyleError):
    """A model (base, adapter, encoder, ControlNet) is neither local nor in the Hub cache."""


class InstantStyleWarning(UserWarning):
    """Something the user should know (the CLI prints it as one ``instantstyle: warning:`` line)."""
