"""Error types shared by every layer.

Each error carries a message a user can act on: it names the file or field
that is wrong and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = ["CistemError", "InvalidInputError", "ProjectError", "ProjectLockedError"]


class CistemError(Exception):
    """Base class of every error cistemd raises on purpose.

    Parameters
    ----------
    message
        What went wrong, in words a user can act on.
    code
        A short stable identifier (``"invalid_input"``, ``"project_locked"``)
        that scripts and the protocol can match on.
    """

    code = "cistem_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInputError(CistemError, ValueError):
    """A file or value that cistemd cannot use.

    Readers raise this -- and only this -- for any malformed input. The message
    starts with the file name (when there is one) and says what is wrong.

    Parameters
    ----------
    message
        What is wrong.
    path
        The offending file, if any; it is prefixed to the message.
    """

    code = "invalid_input"

    def __init__(self, message: str, *, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ProjectError(CistemError):
    """A project that cannot be created, opened or changed as asked."""

    code = "project_error"


class ProjectLockedError(ProjectError):
    """The project is already held by another writer process."""

    code = "project_locked"
