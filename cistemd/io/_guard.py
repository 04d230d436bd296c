"""Private helpers that keep every reader inside its robustness contract.

Readers in :mod:`cistemd.io` promise three things about bad input: they raise
:class:`~cistemd.errors.InvalidInputError` (never another exception), they do
not hang, and they never allocate memory out of proportion to the file. The
pieces here make that easy to honour:

* :func:`file_size` -- ``stat`` a path, turning every ``OSError`` into an
  :class:`InvalidInputError` that says what is wrong in words;
* :func:`invalid_input_on_error` -- a last-resort net that converts any
  unexpected exception from a third-party parser into an
  :class:`InvalidInputError` naming the file;
* :func:`text_lines` -- a bounded, line-numbered reader of text files (size,
  line-length and line-count caps; rejects binary data and bad UTF-8);
* :func:`atomic_output` -- write to a temporary name in the destination
  directory and rename, so no reader ever sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from cistemd.errors import InvalidInputError

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_TEXT_BYTES",
    "MAX_TEXT_ROWS",
    "PathLike",
    "atomic_output",
    "file_size",
    "invalid_input_on_error",
    "parse_finite_float",
    "parse_int",
    "raise_invalid",
    "text_lines",
]

PathLike = str | os.PathLike[str]

#: Text metadata files larger than this are refused (2 GiB).
MAX_TEXT_BYTES = 2 * 1024**3
#: A longer line is refused rather than read into memory (1 MiB).
MAX_LINE_CHARS = 1024**2
#: More data rows than this are refused; 20 million particles is above the
#: largest published single-particle data sets and bounds memory use.
MAX_TEXT_ROWS = 20_000_000


def raise_invalid(path: PathLike, message: str) -> NoReturn:
    """Raise :class:`InvalidInputError` for ``path`` with ``message``."""
    raise InvalidInputError(message, path=os.fspath(path))


def _describe_os_error(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(error, PermissionError):
        return "cannot read: permission denied"
    if error.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    reason = error.strerror or str(error)
    return f"cannot read: {reason}"


def file_size(path: PathLike) -> int:
    """Return the size of the regular file ``path`` in bytes.

    Raises
    ------
    InvalidInputError
        If the path does not exist, is a directory or a special file, or
        cannot be read.
    """
    try:
        status = os.stat(path)
    except OSError as error:
        raise_invalid(path, _describe_os_error(error))
    except (TypeError, ValueError) as error:  # e.g. an embedded NUL byte
        raise InvalidInputError(f"not a usable path: {error}", path=repr(path)) from None
    import stat

    if stat.S_ISDIR(status.st_mode):
        raise_invalid(path, "is a directory, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise_invalid(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise_invalid(path, "cannot read: permission denied")
    return int(status.st_size)


@contextlib.contextmanager
def invalid_input_on_error(path: PathLike, what: str) -> Iterator[None]:
    """Convert any exception raised in the block into :class:`InvalidInputError`.

    :class:`InvalidInputError` passes through unchanged; ``OSError`` becomes a
    readable reason; anything else (a third-party parser's own error types,
    ``struct.error``, ``MemoryError``, ``UnicodeDecodeError`` ...) becomes
    ``"<what>: <exception>"``. ``KeyboardInterrupt`` and ``SystemExit`` are not
    touched.

    Parameters
    ----------
    path
        The file being read; it prefixes the message.
    what
        A few words for the failing step, e.g. ``"not a readable TIFF file"``.
    """
    try:
        yield
    except InvalidInputError:
        raise
    except OSError as error:
        raise InvalidInputError(_describe_os_error(error), path=os.fspath(path)) from error
    except MemoryError as error:
        raise InvalidInputError(
            f"{what}: the file needs more memory than is available", path=os.fspath(path)
        ) from error
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise InvalidInputError(f"{what} ({reason})", path=os.fspath(path)) from error


def text_lines(path: PathLike, *, what: str = "text file") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` pairs of a UTF-8 text file, 1-based.

    Lines are returned without their line ending and with trailing whitespace
    removed. The file is read line by line, so memory use is bounded by
    :data:`MAX_LINE_CHARS` regardless of the file's size.

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable, larger than
        :data:`MAX_TEXT_BYTES`, has a line longer than :data:`MAX_LINE_CHARS`,
        contains NUL bytes (binary data), or is not valid UTF-8.
    """
    size = file_size(path)
    if size > MAX_TEXT_BYTES:
        raise_invalid(
            path, f"{what} is {size / 1024**3:.1f} GiB; refusing text files over 2 GiB"
        )
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise_invalid(path, _describe_os_error(error))
    try:
        number = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE_CHARS + 1)
            except OSError as error:
                raise_invalid(path, _describe_os_error(error))
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_CHARS:
                raise_invalid(
                    path, f"line {number} is longer than {MAX_LINE_CHARS} characters"
                )
            if b"\x00" in raw:
                raise_invalid(path, f"line {number} contains binary data (NUL bytes)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise_invalid(
                    path,
                    f"line {number} is not UTF-8 text (byte 0x{raw[error.start]:02x} "
                    f"at column {error.start + 1})",
                )
            yield number, text.rstrip()
    finally:
        handle.close()


def parse_finite_float(token: str, path: PathLike, line_number: int, label: str) -> float:
    """Parse ``token`` as a finite float or raise an error naming line and column."""
    try:
        value = float(token)
    except ValueError:
        raise_invalid(path, f"line {line_number}: {label} is {token[:40]!r}, not a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise_invalid(path, f"line {line_number}: {label} is {token[:40]!r}, not a finite number")
    return value


_INT64_MAX = 2**63 - 1


def parse_int(token: str, path: PathLike, line_number: int, label: str) -> int:
    """Parse ``token`` as an integer (``"12"`` or an integral ``"12.0"``)."""
    try:
        value = int(token)
    except ValueError:
        number = parse_finite_float(token, path, line_number, label)
        if number != int(number):
            raise_invalid(path, f"line {line_number}: {label} is {token[:40]!r}, not an integer")
        value = int(number)
    if not -_INT64_MAX <= value <= _INT64_MAX:
        raise_invalid(path, f"line {line_number}: {label} is {token[:40]!r}, out of range")
    return value


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary file lives in the destination directory (so the final
    ``os.replace`` is atomic on POSIX) and is removed if the block raises.

    Raises
    ------
    FileExistsError
        If ``overwrite`` is false and ``path`` exists.
    """
    final = Path(path)
    if not overwrite and final.exists():
        raise FileExistsError(errno.EEXIST, "file exists and overwrite=False", str(final))
    temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
