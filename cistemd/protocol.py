r"""The versioned wire protocol between cistemd, its clients and its workers.

Every message is **one ZeroMQ frame** holding **one msgpack map**; on a ROUTER
socket the frame is preceded by the peer's identity frame (see
:func:`split_router_frames`). Nothing is ever unpickled: a frame is checked
byte by byte against the size and shape limits (:class:`Limits`) *before*
msgpack builds a single object, then the envelope, the protocol version, the
message type, the direction and the content schema are checked. Any failure
raises :class:`ProtocolError` -- and only that -- with a stable ``code`` and a
reason that names the offending field, which the receiver counts
(:class:`ProtocolStats`) and answers with an ``error`` message.

Envelope
--------
::

    {"header":        {"msg_id": str, "msg_type": str, "version": int,
                       "date": "2024-05-01T12:34:56.123456Z", "sender": str},
     "parent_header": {} | <the header of the request this message answers>,
     "content":       {... fields of msg_type, below ...}}

* ``msg_id`` -- unique id (uuid4 hex), ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}``;
* ``msg_type`` -- a registered type name, ``[a-z][a-z0-9_]{0,63}``;
* ``version`` -- :data:`PROTOCOL_VERSION`; a different version is rejected
  (``version_mismatch``), both ends must run the same protocol version;
* ``date`` -- ISO-8601 UTC with a ``Z`` suffix;
* ``sender`` -- free printable ASCII label (``"cistemd"``, ``"worker:w1"``), may be empty.

Every key must be a str; maps must not repeat a key; floats must be finite;
msgpack ext types (including timestamps) are refused.

Limits
------
Defaults (:data:`DEFAULT_LIMITS`): a frame is at most :data:`MAX_FRAME_BYTES`
(1 MiB; larger data travels as files on the shared filesystem), maps and arrays
nest at most 16 deep (the envelope is level 1), a frame declares at most 65,536
objects in all and 65,536 in one container, a str is at most 256 KiB. Decoding
any frame costs O(frame size) time and memory. The broker sets ZeroMQ's
``MAXMSGSIZE`` to :attr:`Limits.transport_max_bytes` (2 MiB), so a frame
somewhat too large is still answered with ``frame_too_large``.

Message spec (protocol version 1)
---------------------------------
Directions: ``C>D`` client to daemon, ``D>C`` daemon to client, ``W>D`` worker
to daemon, ``D>W`` daemon to worker, ``PUB`` event stream. ``?`` marks an
optional field (its default in brackets). ``value`` is any JSON-like value
(nil, bool, int, finite float, str, list, map with str keys) of bounded depth;
``JOB`` and ``EVENT`` are the records below. ``A -> B`` means ``B`` (or
``error``) answers ``A``. An ``error`` is never answered.

Client and daemon:

* ``ping`` (C>D) ``{}`` -> ``pong`` (D>C) ``{}``.
* ``error`` (D>C, D>W, W>D) ``{code: str, reason: str ≤ 4096}`` -- ``code`` is
  stable (:data:`PROTOCOL_ERROR_CODES` or a daemon code such as ``no_such_job``).
* ``status_request`` (C>D) ``{}`` -> ``status_reply`` (D>C) ``{pid: int ≥ 1,
  version: str, protocol_version: int, uptime_s: float ≥ 0, projects: [path],
  workers: int ≥ 0, jobs: {state: int}, protocol_errors?: {code: int} [{}]}``.
* ``project_create`` (C>D) ``{path, name?: str [""]}``, ``project_open`` (C>D)
  ``{path}``, ``project_info`` (C>D) ``{path}`` -> ``project_reply`` (D>C)
  ``{path, name: str, counts?: {kind: int} [{}]}``.
* ``job_submit`` (C>D) ``{project: path, action: name, parameters?: {str: value}
  [{}], profile?: str [""]}`` -> ``job_submitted`` (D>C) ``{job_id: id}``.
* ``job_cancel`` (C>D) ``{job_id}``, ``job_show`` (C>D) ``{job_id}`` ->
  ``job_reply`` (D>C) ``{job: JOB}``.
* ``jobs_list`` (C>D) ``{project?: path-or-"" [""], states?: [name] [[]],
  limit?: int 1..1000 [200], offset?: int ≥ 0 [0]}`` -> ``jobs_reply`` (D>C)
  ``{jobs: [JOB] ≤ 1000, total: int ≥ 0}``.
* ``job_log`` (C>D) ``{job_id, since_event_id?: int ≥ 0 [0], limit?: int 1..2000
  [500]}`` -> ``job_log_reply`` (D>C) ``{job_id, events: [EVENT], last_event_id:
  int ≥ 0, more: bool}``.
* ``subscribe`` (C>D) ``{since_event_id?: int ≥ 0 [0], job_id?: id-or-"" [""]}``
  -> ``subscribed`` (D>C) ``{pub_endpoint: str, events: [EVENT], last_event_id:
  int ≥ 0, more: bool}`` -- the replay of stored events after ``since_event_id``
  (ask again while ``more``); connect a SUB socket to ``pub_endpoint`` and drop
  published events whose ``event_id`` ≤ the last one seen.
* ``assets_import`` (C>D) ``{project: path, kind: "movies" | "images" | "positions"
  | "volumes" | "refinement_package", paths: [path] 1..500, options?: {name: value}
  [{}]}`` -> ``assets_imported`` (D>C) ``{kind, ids: [int] ≤ 500, count: int ≥ 0,
  warnings: [str] ≤ 100}`` -- one transaction per request: all of ``paths`` or
  none. ``positions`` takes one text file; ``refinement_package`` takes
  ``[stack, parameters]``. ``options`` are the import dialog's fields
  (``voltage_kv``, ``pixel_size_angstroms``, ...; the daemon names an unknown one).
  Bigger imports are split into several requests by the client, so the
  daemon is never busy with one for long.
* ``assets_list`` (C>D) ``{project, kind: "movies" | "images" | "positions" |
  "volumes" | "packages" | "refinements" | "ctf_estimates", group_id?: int ≥ 0 [0],
  limit?: int 1..1000 [200], offset?: int ≥ 0 [0]}`` -> ``assets_reply`` (D>C)
  ``{kind, assets: [{str: value}] ≤ 1000, total: int ≥ 0}`` -- rows with cisTEM's
  column names in lower case; a page may hold fewer rows than ``limit`` to stay
  under the frame size (ask again from ``offset + len(assets)``).
* ``groups_list`` (C>D) ``{project, kind: group kind, group_id?: int ≥ -1 [-1],
  offset?: int ≥ 0 [0], limit?: int 1..10000 [10000]}`` and ``groups_edit`` (C>D)
  ``{project, kind, operation: "create" | "rename" | "delete" | "add" | "remove" |
  "from_movie_group", group_id?: int ≥ 0 [0], name?: str [""], asset_ids?: [int ≥ 1]
  ≤ 10000 [[]]}`` -> ``groups_reply`` (D>C) ``{kind, groups: [GROUP] ≤ 10000,
  group_id?: int ≥ -1 [-1], changed?: int ≥ 0 [0], members?: [int] ≤ 10000 [[]],
  members_total?: int ≥ 0 [0]}``. Group kinds: ``movie``, ``image``,
  ``particle_position``, ``volume``, ``atomic_coordinates``; group 0 is "All ...".
  ``groups_list`` with ``group_id`` ≥ 0 also returns a page of its members.
* ``job_tasks`` (C>D) ``{job_id, states?: [name] [[]], limit?: int 1..1000 [100],
  offset?: int ≥ 0 [0]}`` -> ``job_tasks_reply`` (D>C) ``{job_id, tasks: [TASK] ≤
  1000, total: int ≥ 0}`` -- tasks in stage and position order (a page may be
  shorter than ``limit`` to stay under the frame size).
* ``job_results`` (C>D) ``{job_id, limit?: int 1..1000 [100], offset?: int ≥ 0 [0]}``
  -> ``job_results_reply`` (D>C) ``{job_id, results: [RESULT] ≤ 1000, total: int ≥ 0}``
  -- the results the job recorded, one per completed task.
* ``actions_list`` (C>D) ``{}`` -> ``actions_reply`` (D>C) ``{actions: [ACTION] ≤ 256,
  problems?: [str] ≤ 256 [[]]}`` -- every registered action with its parameters,
  so a client builds forms without importing actions; ``problems`` names actions
  whose module could not be loaded.
* ``image_preview`` (C>D) ``{project, source: "image" | "movie" | "volume" |
  "ctf_estimate" | "file", asset_id?: int ≥ 0 [0], path?: path-or-"" [""], which?:
  "image" | "spectrum" | "scaled" | "ctf_diagnostic" | "volume_orth" ["image"],
  max_size?: int 16..512 [256]}`` -> ``image_reply`` (D>C) ``{width: int, height:
  int, pixels: bytes, file: path, original_width: int, original_height: int,
  original_depth: int, pixel_size_angstroms: float ≥ 0, scale: float > 0}`` -- a
  downsampled 8-bit grey picture (``width · height`` bytes, rows top to bottom,
  the MRC's y axis pointing up as cisTEM displays it); ``scale`` is picture pixels
  per file pixel; ``file`` (with ``source: "file"``) must lie inside the project.
* ``results_query`` (C>D) ``{project, query: "ctf_table" | "ctf_fit" | "alignments" |
  "alignment_shifts" | "picked_images" | "picks" | "fsc", parameters?: {str: value}
  [{}], limit?: int 1..10000 [500], offset?: int ≥ 0 [0]}`` -> ``results_reply``
  (D>C) ``{query, rows: [{str: value}] ≤ 10000, total: int ≥ 0, data?: {str: value}
  [{}]}`` -- read-only result tables and curves of the actions (see
  :func:`cistemd.manager.client_ops.results_query`); pages may be shorter than
  ``limit`` to stay under the frame limits.
* ``positions_edit`` (C>D) ``{project, operation: "add" | "remove", image_asset_id:
  int ≥ 1, x?: [float] ≤ 10000 [[]], y?: [float] ≤ 10000 [[]], position_ids?: [int ≥
  1] ≤ 10000 [[]], radius_angstroms?: float ≥ 0 [50]}`` -> ``positions_reply`` (D>C)
  ``{image_asset_id, operation, position_ids: [int] ≤ 10000, total: int ≥ 0}`` --
  manual editing of picks: ``add`` records positions (Å from the first pixel) on
  the image and returns their ids; ``remove`` deletes the given ids and, for each
  ``(x, y)``, the image's position nearest to it within ``radius_angstroms``, and
  returns the ids removed; ``total`` is the image's count after the edit.

Run profiles (``PROFILE`` = :meth:`cistemd.manager.profiles.RunProfile.to_dict`):

* ``profiles_list`` (C>D) ``{}``, ``profile_save`` (C>D) ``{profile: PROFILE}``,
  ``profile_delete`` (C>D) ``{name: str}``, ``profiles_import`` (C>D) ``{text: str
  ≤ 256 KiB}`` (cisTEM's ``default_run_profiles.txt``) -> ``profiles_reply`` (D>C)
  ``{profiles: [PROFILE] ≤ 1000, names?: [str] [[]]}`` -- every profile after the
  change; ``names`` are the ones imported or saved.
* ``profiles_export`` (C>D) ``{names?: [str] [[]]}`` (empty: all) -> ``profiles_text``
  (D>C) ``{text: str}`` in cisTEM's format.

Worker and daemon:

* ``worker_hello`` (W>D) ``{worker_id: id, job_id: id-or-"", host: str, pid: int ≥ 1,
  protocol_version: int, threads: int ≥ 1, prefetch?: int 1..64 [1]}`` ->
  ``worker_welcome`` (D>W) ``{heartbeat_interval_s: float > 0, liveness: int ≥ 1}``
  (beats missed before the peer is declared dead). A worker with ``prefetch`` K > 1
  may be sent up to K ``task_assign`` ahead, runs them in order, and sends
  ``task_request`` only after (re)connecting: the daemon tops it up as its
  outcomes arrive.
* ``heartbeat`` (W>D, D>W) ``{task_id?: id-or-"" [""], attempt?: int ≥ 0 [0]}``.
* ``task_request`` (W>D) ``{}`` -> ``task_assign`` (D>W) ``{task_id: id, attempt:
  int ≥ 1, action: name, parameters: {str: value}, lease_s: float > 0}``.
* ``task_progress`` (W>D) ``{task_id, attempt, fraction: float 0..1, message?: str
  ≤ 1024 [""]}``.
* ``task_result`` (W>D) ``{task_id, attempt, result: {str: value}, output_files?:
  [path] [[]], elapsed_s?: float ≥ 0 [0.0]}``.
* ``task_error`` (W>D) ``{task_id, attempt, reason: str ≤ 4096, traceback?: str ≤
  4096 [""]}`` -- the *tail* of the traceback.
* ``task_cancel`` (D>W) ``{task_id, attempt, reason?: str [""]}``.
* ``worker_shutdown`` (D>W) ``{reason: str}``; ``worker_bye`` (W>D) ``{reason?: str [""]}``.

Events (PUB):

* ``event`` (PUB) ``EVENT``.

Records:

* ``EVENT`` = ``{event_id: int ≥ 1, job_id: id-or-"", kind: "state" | "progress" |
  "log", payload: {str: value}, time: date}``.
* ``JOB`` = ``{job_id, project: path, action: name, profile: str, state: name,
  submitted: date, progress: float 0..1, tasks?: {state: int} [{}], parameters?:
  {str: value} [{}], message?: str [""]}``.
* ``GROUP`` = ``{group_id: int ≥ 0, name: str, count: int ≥ 0, implicit: bool}``.
* ``TASK`` = ``{task_id: id, key: str, stage: int ≥ 0, label: str, state: name,
  attempt: int ≥ 0, failures: int ≥ 0, worker_id: str, host: str, reason: str,
  evidence: [value]}`` -- ``evidence`` holds what each lost attempt left (exit
  code, signal, the tail of stderr), clipped.
* ``RESULT`` = ``{task_id: id, key: str, attempt: int ≥ 1, worker_id: str, result:
  {str: value}, output_files: [path], elapsed_s: float ≥ 0, recorded_at: date-or-str}``.

Adding a message type is one ``_define(...)`` call at the bottom of this module
(with an example, which the tests round-trip); list it above too.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import math
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

import msgpack

from cistemd.errors import CistemError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_FRAME_BYTES",
    "PROTOCOL_ERROR_CODES",
    "PROTOCOL_VERSION",
    "REGISTRY",
    "Bool",
    "Bytes",
    "Dict",
    "Direction",
    "Float",
    "Header",
    "Int",
    "Limits",
    "List",
    "Message",
    "MessageSpec",
    "Opt",
    "ProtocolError",
    "ProtocolStats",
    "Schema",
    "Str",
    "Timestamp",
    "Type",
    "Value",
    "decode",
    "encode",
    "error_message",
    "join_router_frames",
    "new_message",
    "split_router_frames",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
"""Version written into every header; a peer speaking another one is refused."""

MAX_FRAME_BYTES: Final = 1 << 20
"""Largest message frame accepted or sent (1 MiB); big data travels as files."""

PROTOCOL_ERROR_CODES: Final = frozenset(
    {
        "frame_too_large",  # the raw frame is over Limits.max_frame_bytes
        "undecodable",  # not msgpack, truncated, ext types, non-str keys, duplicate keys...
        "too_deep",  # containers nested deeper than Limits.max_depth
        "too_large",  # a decoded-size cap: too many items, a str/bin/array/map too long
        "bad_envelope",  # not {header, parent_header, content} or a malformed header
        "version_mismatch",  # header.version is not PROTOCOL_VERSION
        "unknown_type",  # header.msg_type is not registered
        "wrong_direction",  # a registered type that may not travel this way
        "schema",  # content does not match the type's schema
        "internal",  # a bug in this module; never caused by the peer alone
    }
)
"""Every ``code`` a :class:`ProtocolError` can carry."""

_ROUTER_IDENTITY_MAX: Final = 255  # libzmq's limit on a routing id
_REASON_MAX: Final = 4096
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_MSGPACK_INT_MIN: Final = -(1 << 63)
_MSGPACK_INT_MAX: Final = (1 << 64) - 1


# --------------------------------------------------------------------------- errors


class ProtocolError(CistemError):
    """A frame or message that breaks the protocol.

    Parameters
    ----------
    reason
        What is wrong, naming the field (``"content.attempt: expected int ≥ 1,
        got str"``), in words the sender's author can act on.
    code
        One of :data:`PROTOCOL_ERROR_CODES`.
    header
        The offending message's header when it could be read, so that the
        error reply can name it as its ``parent_header``.
    identity
        The ROUTER identity of the sender, when known.
    """

    code = "protocol_error"

    def __init__(
        self,
        reason: str,
        *,
        code: str,
        header: Header | None = None,
        identity: bytes | None = None,
    ) -> None:
        super().__init__(reason, code=code)
        self.header = header
        self.identity = identity

    @property
    def reason(self) -> str:
        """The human-readable reason (the exception message)."""
        return str(self.args[0]) if self.args else ""


class _Invalid(Exception):
    """A schema violation at ``path``; converted to :class:`ProtocolError` by callers."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "nil"
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    name = f"{kind.__module__}.{kind.__qualname__}"
    if kind.__module__.startswith("numpy"):
        name += " (convert numpy scalars and arrays with .item() or .tolist())"
    return name


def _got(value: object) -> str:
    """Describe a bad value briefly and safely (hostile strings are clipped)."""
    if isinstance(value, bool) or value is None:
        return f"{_type_name(value)} {value!r}" if value is not None else "nil"
    if isinstance(value, int | float):
        return f"{_type_name(value)} {_clip(repr(value), 40)}"
    if isinstance(value, str):
        return f"str {_clip(repr(value), 40)}"
    if isinstance(value, bytes | bytearray | list | dict | tuple):
        return f"{_type_name(value)} of length {len(value)}"
    return _type_name(value)


def _key_path(path: str, key: object) -> str:
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_clip(repr(key), 40)}]"


_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


# --------------------------------------------------------------------------- schema language


def _bounds(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    if low is not None and high is not None and not low_open:
        return f" in [{low}, {high}]"
    text = ""
    if low is not None:
        text += f" {'>' if low_open else '≥'} {low}"
    if high is not None:
        text += f"{',' if text else ''} ≤ {high}"
    return text


class Type(ABC):
    """A value type of the schema language.

    Subclasses check one decoded (or outgoing) value and return its normalised
    form (defaults filled in, ints widened to float where a float is asked).
    """

    __slots__ = ()

    @abstractmethod
    def check(self, value: object, path: str) -> Any:
        """Return the normalised ``value`` or raise for the field at ``path``.

        Parameters
        ----------
        value
            The value to check.
        path
            Where it sits in the message (``"content.tasks[2].id"``), for errors.

        Returns
        -------
        Any
            The normalised value.
        """

    @abstractmethod
    def describe(self) -> str:
        """Return what this type accepts, as used in error reasons."""

    def depth(self) -> int:
        """Return the deepest container nesting a valid value can have."""
        return 0


@dataclasses.dataclass(frozen=True, slots=True)
class Str(Type):
    """A str, with optional length bounds (in characters), regex or choices.

    Parameters
    ----------
    min_len, max_len
        Length bounds in characters.
    pattern
        A regular expression the whole string must match.
    choices
        The only allowed values.
    what
        A short name of the value used in error reasons instead of the regex
        (``"id"``, ``"path"``).
    """

    min_len: int = 0
    max_len: int = 4096
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    what: str | None = None
    _regex: re.Pattern[str] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    def describe(self) -> str:  # noqa: D102
        if self.choices is not None:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        if self.what is not None:
            return self.what
        text = "str"
        if self.min_len > 0:
            text += f" of {self.min_len} to {self.max_len} characters"
        else:
            text += f" of at most {self.max_len} characters"
        if self.pattern is not None:
            text += f" matching {self.pattern}"
        return text

    def check(self, value: object, path: str) -> str:  # noqa: D102
        if not isinstance(value, str):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _Invalid(
                path,
                f"expected {self.describe()}, got a str of {len(value)} characters",
            )
        if self._regex is not None and self._regex.fullmatch(value) is None:
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        if self.choices is not None and value not in self.choices:
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        return str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Int(Type):
    """An int (never a bool) in ``[min, max]``; int64 unless bounds say otherwise.

    Parameters
    ----------
    min, max
        Inclusive bounds.
    """

    min: int | None = None
    max: int | None = None

    def describe(self) -> str:  # noqa: D102
        return "int" + _bounds(self.min, self.max)

    def check(self, value: object, path: str) -> int:  # noqa: D102
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        low = _INT64_MIN if self.min is None else self.min
        high = _INT64_MAX if self.max is None else self.max
        if not low <= value <= high:
            raise _Invalid(path, f"expected {self.describe()}, got {_clip(repr(value), 40)}")
        return int(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Float(Type):
    """A finite float (an int is accepted and widened) in ``[min, max]``.

    Parameters
    ----------
    min, max
        Bounds.
    min_exclusive
        Whether ``min`` itself is refused (``> 0`` rather than ``≥ 0``).
    """

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False

    def describe(self) -> str:  # noqa: D102
        return "finite float" + _bounds(self.min, self.max, low_open=self.min_exclusive)

    def check(self, value: object, path: str) -> float:  # noqa: D102
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise _Invalid(path, f"expected {self.describe()}, got a huge int") from None
        if not math.isfinite(number):
            raise _Invalid(path, f"expected {self.describe()}, got {number!r}")
        too_low = self.min is not None and (
            number <= self.min if self.min_exclusive else number < self.min
        )
        if too_low or (self.max is not None and number > self.max):
            raise _Invalid(path, f"expected {self.describe()}, got {number!r}")
        return number


@dataclasses.dataclass(frozen=True, slots=True)
class Bool(Type):
    """A bool (``true``/``false``; 0 and 1 are refused)."""

    def describe(self) -> str:  # noqa: D102
        return "bool"

    def check(self, value: object, path: str) -> bool:  # noqa: D102
        if not isinstance(value, bool):
            raise _Invalid(path, f"expected bool, got {_got(value)}")
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class Bytes(Type):
    """A msgpack bin (Python ``bytes``) of at most ``max_len`` bytes.

    Parameters
    ----------
    max_len
        Length bound in bytes.
    """

    max_len: int = MAX_FRAME_BYTES

    def describe(self) -> str:  # noqa: D102
        return f"bytes of at most {self.max_len}"

    def check(self, value: object, path: str) -> bytes:  # noqa: D102
        if not isinstance(value, bytes):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        if len(value) > self.max_len:
            raise _Invalid(path, f"expected {self.describe()}, got {len(value)} bytes")
        return value


_TIMESTAMP_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Timestamp(Type):
    """An ISO-8601 UTC date-time string with a ``Z`` suffix (``2024-05-01T12:00:00.5Z``)."""

    def describe(self) -> str:  # noqa: D102
        return "ISO-8601 UTC date like '2024-05-01T12:34:56.123456Z'"

    def check(self, value: object, path: str) -> str:  # noqa: D102
        if not isinstance(value, str) or _TIMESTAMP_RE.fullmatch(value) is None:
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(path, f"expected a real date, got {_got(value)}") from None
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class List(Type):
    """A list whose items are all of one type.

    Parameters
    ----------
    item
        Type of every item.
    min_len, max_len
        Length bounds.
    """

    item: Type
    min_len: int = 0
    max_len: int = 10_000

    def describe(self) -> str:  # noqa: D102
        return f"list of at most {self.max_len} {self.item.describe()}"

    def depth(self) -> int:  # noqa: D102
        return 1 + self.item.depth()

    def check(self, value: object, path: str) -> list[Any]:  # noqa: D102
        if not isinstance(value, list):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _Invalid(
                path,
                f"expected a list of {self.min_len} to {self.max_len} items, got {len(value)}",
            )
        check = self.item.check
        return [check(item, f"{path}[{index}]") for index, item in enumerate(value)]


_NAME_PATTERN: Final = r"[a-z][a-z0-9_]{0,63}"
_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
_NAME_KEY: Final = Str(min_len=1, max_len=64, pattern=_NAME_PATTERN, what="snake_case name")
_ANY_KEY: Final = Str(min_len=0, max_len=256)


@dataclasses.dataclass(frozen=True, slots=True)
class Dict(Type):
    """A map from str keys to values of one type.

    Parameters
    ----------
    value
        Type of every value.
    max_len
        Most entries.
    key
        Type of the keys (a :class:`Str`).
    """

    value: Type
    max_len: int = 1024
    key: Str = _ANY_KEY

    def describe(self) -> str:  # noqa: D102
        return f"map of at most {self.max_len} entries"

    def depth(self) -> int:  # noqa: D102
        return 1 + self.value.depth()

    def check(self, value: object, path: str) -> dict[str, Any]:  # noqa: D102
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        if len(value) > self.max_len:
            raise _Invalid(path, f"expected {self.describe()}, got {len(value)} entries")
        out: dict[str, Any] = {}
        key_type, value_type = self.key, self.value
        if type(value_type) is Value and key_type.pattern is None and key_type.choices is None:
            # The common map of JSON-like values: paths are built only for an error
            # (Value takes a lazy ``(parent, key)`` path).
            low, high = key_type.min_len, key_type.max_len
            check = value_type.check
            for key, item in value.items():
                if not isinstance(key, str) or not low <= len(key) <= high:
                    key_type.check(key, _key_path(path, key) + " (key)")  # raises
                out[key] = check(item, (path, key))  # type: ignore[arg-type]
            return out
        for key, item in value.items():
            where = _key_path(path, key)
            key_type.check(key, where + " (key)")
            out[key] = value_type.check(item, where)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Value(Type):
    """Any JSON-like value: nil, bool, int, finite float, str, list, map with str keys.

    Checked iteratively (no recursion), so neither depth nor a cycle in an
    outgoing value can exhaust the stack. The value is returned unchanged.

    Parameters
    ----------
    max_depth
        Deepest nesting of lists and maps (a scalar has depth 0).
    max_items
        Most scalars and containers in total (guards outgoing values that
        share sub-lists, which could otherwise blow up exponentially).
    """

    max_depth: int = 6
    max_items: int = 65_536

    def describe(self) -> str:  # noqa: D102
        return f"JSON-like value nested at most {self.max_depth} deep"

    def depth(self) -> int:  # noqa: D102
        return self.max_depth

    def check(self, value: object, path: str) -> Any:  # noqa: D102
        # Each stack entry: (value, depth of the value, where = (parent where, key) | path).
        stack: list[tuple[object, int, object]] = [(value, 0, path)]
        seen = 0
        while stack:
            item, depth, where = stack.pop()
            seen += 1
            if seen > self.max_items:
                raise _Invalid(_where(path), f"more than {self.max_items} items in one value")
            if item is None or isinstance(item, bool | str):
                continue
            if isinstance(item, int):
                if not _MSGPACK_INT_MIN <= item <= _MSGPACK_INT_MAX:
                    raise _Invalid(_where(where), "int out of the 64-bit range")
                continue
            if isinstance(item, float):
                if not math.isfinite(item):
                    raise _Invalid(_where(where), f"expected a finite float, got {item!r}")
                continue
            if isinstance(item, list | dict):
                if depth + 1 > self.max_depth:
                    raise _Invalid(_where(where), f"nested deeper than {self.max_depth} lists/maps")
                if isinstance(item, list):
                    stack.extend(
                        (child, depth + 1, (where, index)) for index, child in enumerate(item)
                    )
                else:
                    for key, child in item.items():
                        if not isinstance(key, str):
                            raise _Invalid(
                                _where((where, key)), f"map keys must be str, got {_got(key)}"
                            )
                        stack.append((child, depth + 1, (where, key)))
                continue
            raise _Invalid(
                _where(where),
                f"expected a JSON-like value (nil, bool, int, float, str, list, map), "
                f"got {_got(item)}",
            )
        return value


def _default_maker(default: Any) -> Callable[[], Any]:
    """Return a maker of fresh copies of ``default`` (immutable ones are shared)."""
    if default is None or isinstance(default, bool | int | float | str | bytes):
        return lambda: default
    if isinstance(default, list | dict) and not default:
        return type(default)
    return lambda: copy.deepcopy(default)


def _where(where: object) -> str:
    """Rebuild a dotted path from the linked ``(parent, key)`` chain of :class:`Value`."""
    keys: list[object] = []
    while isinstance(where, tuple):
        where, key = where
        keys.append(key)
    path = str(where)
    for key in reversed(keys):
        path = f"{path}[{key}]" if isinstance(key, int) else _key_path(path, key)
    return path


@dataclasses.dataclass(frozen=True, slots=True)
class Opt:
    """Mark a schema field optional, with the default used when it is absent.

    Parameters
    ----------
    type
        The field's type.
    default
        Value filled in when the field is absent (copied, so ``[]`` and ``{}``
        are safe); it must itself be valid.
    """

    type: Type
    default: Any


class Schema(Type):
    """A map with named fields: the content of a message, or a nested record.

    Parameters
    ----------
    fields
        Field name to :class:`Type` (required) or :class:`Opt` (optional).
    extra
        ``"forbid"`` (default) rejects unknown keys; ``"allow"`` keeps them,
        checked as :class:`Value` of depth at most ``extra_depth``.
    extra_depth
        Nesting allowed in unknown keys' values when ``extra="allow"``.
    name
        Record name used in error reasons (``"JOB"``).

    Raises
    ------
    ValueError
        If a field name is not snake_case or a default does not validate.
    """

    __slots__ = ("_extra_value", "_paths", "_plan", "extra", "fields", "name")

    def __init__(
        self,
        fields: Mapping[str, Type | Opt],
        *,
        extra: Literal["forbid", "allow"] = "forbid",
        extra_depth: int = 4,
        name: str = "map",
    ) -> None:
        for field_name, spec in fields.items():
            if re.fullmatch(_NAME_PATTERN, field_name) is None:
                raise ValueError(f"field name {field_name!r} is not snake_case")
            if isinstance(spec, Opt):
                try:
                    spec.type.check(copy.deepcopy(spec.default), field_name)
                except _Invalid as exc:
                    raise ValueError(f"default of field {exc}") from None
        self.fields: Mapping[str, Type | Opt] = MappingProxyType(dict(fields))
        self.extra = extra
        self.name = name
        self._extra_value = Value(max_depth=extra_depth)
        # Compiled once: (name, check, default maker or None if required) per field.
        self._plan: tuple[tuple[str, Callable[[object, str], Any], Callable[[], Any] | None], ...]
        self._plan = tuple(
            (
                field_name,
                (spec.type if isinstance(spec, Opt) else spec).check,
                _default_maker(spec.default) if isinstance(spec, Opt) else None,
            )
            for field_name, spec in self.fields.items()
        )
        self._paths: dict[str, tuple[str, ...]] = {}  # path -> the fields' paths under it

    def __repr__(self) -> str:
        return f"Schema({dict(self.fields)!r}, extra={self.extra!r})"

    def describe(self) -> str:  # noqa: D102
        if not self.fields:
            return f"{self.name} with no fields"
        return f"{self.name} with fields " + ", ".join(self.fields)

    def depth(self) -> int:  # noqa: D102
        depths = [
            (spec.type if isinstance(spec, Opt) else spec).depth() for spec in self.fields.values()
        ]
        if self.extra == "allow":
            depths.append(self._extra_value.depth())
        return 1 + max(depths, default=0)

    def check(self, value: object, path: str) -> dict[str, Any]:  # noqa: D102
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected {self.describe()}, got {_got(value)}")
        out: dict[str, Any] = {}
        fields = self.fields
        known = 0
        for key, item in value.items():
            if key in fields:
                known += 1
                continue
            if self.extra == "forbid":
                names = ", ".join(fields) or "none"
                raise _Invalid(
                    _key_path(path, key), f"unknown field (the known fields are: {names})"
                )
            if not isinstance(key, str):
                raise _Invalid(_key_path(path, key), f"map keys must be str, got {_got(key)}")
            out[key] = self._extra_value.check(item, _key_path(path, key))
        paths = self._paths.get(path)
        if paths is None:
            paths = tuple(f"{path}.{field_name}" for field_name in fields)
            if len(self._paths) < 256:  # paths are few; list indexes make more
                self._paths[path] = paths
        if known == len(self._plan):  # every field present: the common case
            for (field_name, check, _), where in zip(self._plan, paths, strict=True):
                out[field_name] = check(value[field_name], where)
            return out
        for (field_name, check, make_default), where in zip(self._plan, paths, strict=True):
            if field_name in value:
                out[field_name] = check(value[field_name], where)
            elif make_default is not None:
                out[field_name] = make_default()
            else:
                spec = fields[field_name]
                expected = (spec.type if isinstance(spec, Opt) else spec).describe()
                raise _Invalid(where, f"required field is missing (expected {expected})")
        return out


# --------------------------------------------------------------------------- limits and scan


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Size and shape limits applied to every frame before msgpack decodes it.

    Parameters
    ----------
    max_frame_bytes
        Largest frame, in bytes.
    max_depth
        Deepest nesting of maps and arrays (the envelope map is depth 1).
    max_items
        Most objects (scalars, strings, containers, keys) declared in one frame.
    max_container_len
        Most elements of one array or entries of one map.
    max_str_bytes
        Longest str, in UTF-8 bytes.
    max_bin_bytes
        Longest bin, in bytes.
    """

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_depth: int = 16
    max_items: int = 65_536
    max_container_len: int = 65_536
    max_str_bytes: int = 256 * 1024
    max_bin_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{field.name} must be an int ≥ 1, got {value!r}")

    @property
    def transport_max_bytes(self) -> int:
        """Value for ZeroMQ's ``MAXMSGSIZE`` socket option.

        Twice :attr:`max_frame_bytes`: a frame a little too large still
        reaches :func:`decode` and is answered with ``frame_too_large``;
        beyond this, libzmq drops the connection before any reply is possible.
        """
        return 2 * self.max_frame_bytes


DEFAULT_LIMITS: Final = Limits()
"""The limits used when none are given."""

# Byte-tag table of the msgpack format. Kinds:
# (_FIXARRAY.._MAP are consecutive: _scan tests the range.)
_FIXED, _FIXSTR, _STR, _BIN, _FIXARRAY, _FIXMAP, _ARRAY, _MAP, _EXT, _NEVER = range(10)


def _build_tag_table() -> tuple[tuple[int, int], ...]:
    """Return ``(kind, argument)`` for each of the 256 leading bytes.

    ``argument`` is the total size for fixed-size objects and the width of
    the length prefix for variable ones.
    """
    table: list[tuple[int, int]] = []
    for tag in range(256):
        if tag <= 0x7F or tag >= 0xE0:
            entry = (_FIXED, 1)  # positive / negative fixint
        elif tag <= 0x8F:
            entry = (_FIXMAP, 0)
        elif tag <= 0x9F:
            entry = (_FIXARRAY, 0)
        elif tag <= 0xBF:
            entry = (_FIXSTR, 0)
        else:
            entry = {
                0xC0: (_FIXED, 1),  # nil
                0xC1: (_NEVER, 0),
                0xC2: (_FIXED, 1),  # false
                0xC3: (_FIXED, 1),  # true
                0xC4: (_BIN, 1),
                0xC5: (_BIN, 2),
                0xC6: (_BIN, 4),
                0xC7: (_EXT, 0),
                0xC8: (_EXT, 0),
                0xC9: (_EXT, 0),
                0xCA: (_FIXED, 5),  # float32
                0xCB: (_FIXED, 9),  # float64
                0xCC: (_FIXED, 2),
                0xCD: (_FIXED, 3),
                0xCE: (_FIXED, 5),
                0xCF: (_FIXED, 9),
                0xD0: (_FIXED, 2),
                0xD1: (_FIXED, 3),
                0xD2: (_FIXED, 5),
                0xD3: (_FIXED, 9),
                0xD4: (_EXT, 0),
                0xD5: (_EXT, 0),
                0xD6: (_EXT, 0),
                0xD7: (_EXT, 0),
                0xD8: (_EXT, 0),
                0xD9: (_STR, 1),
                0xDA: (_STR, 2),
                0xDB: (_STR, 4),
                0xDC: (_ARRAY, 2),
                0xDD: (_ARRAY, 4),
                0xDE: (_MAP, 2),
                0xDF: (_MAP, 4),
            }[tag]
        table.append(entry)
    return tuple(table)


_TAGS: Final = _build_tag_table()


def _undecodable(reason: str) -> ProtocolError:
    return ProtocolError(reason, code="undecodable")


def _scan(frame: bytes, limits: Limits) -> None:
    """Walk the msgpack structure of ``frame`` without building any object.

    msgpack's C unpacker preallocates every array and map at its declared
    length before reading the elements, so a few kB of nested ``0xdc ff ff``
    headers would cost gigabytes. This walk refuses such frames first: every
    container must declare no more elements than bytes remain (each element
    takes at least one byte), the declared total is capped, nesting is capped,
    and so are str/bin lengths. It also enforces this protocol's stricter
    rules: str map keys only, no ext types. Time and memory are O(frame).

    Raises
    ------
    ProtocolError
        ``undecodable``, ``too_deep`` or ``too_large``.
    """
    end = len(frame)
    if end == 0:
        raise _undecodable("empty frame; a message is one msgpack map")
    tags = _TAGS
    fixed, fixstr, string, binary = _FIXED, _FIXSTR, _STR, _BIN
    fixarray, array, mapping = _FIXARRAY, _ARRAY, _MAP
    max_depth = limits.max_depth
    max_container = limits.max_container_len
    max_items = limits.max_items
    max_str = limits.max_str_bytes
    max_bin = limits.max_bin_bytes
    # The open container's state lives in locals; outer ones are saved on the stack.
    left = 1  # objects still expected at this level (the root level expects one)
    in_map = False  # whether this level is a map (keys and values alternate)
    stack: list[tuple[int, bool]] = []
    outstanding = 1  # objects still expected over all levels; each needs >= 1 byte
    declared = 1  # objects declared so far (the root counts)
    pos = 0
    while True:
        if pos >= end:
            raise _undecodable(f"frame is truncated at byte {pos} (a container is unfinished)")
        tag = frame[pos]
        kind, arg = tags[tag]
        if in_map and not left & 1 and kind != fixstr and kind != string:
            raise _undecodable(
                f"map key at byte {pos} is not a str (tag 0x{tag:02x}); only str keys are allowed"
            )
        left -= 1
        outstanding -= 1
        if kind == fixed:
            pos += arg
        elif kind == fixstr:
            length = tag & 0x1F
            if length > max_str:
                raise _too_long("str", pos, length, max_str)
            pos += 1 + length
        elif fixarray <= kind <= mapping:  # fixarray, fixmap, array or map
            if arg == 0:
                count = tag & 0x0F
            elif pos + 1 + arg > end:
                raise _undecodable(f"frame is truncated in a length prefix at byte {pos}")
            else:
                count = int.from_bytes(frame[pos + 1 : pos + 1 + arg], "big")
            is_array = kind == fixarray or kind == array
            if count > max_container:
                raise ProtocolError(
                    f"{'an array' if is_array else 'a map'} at byte {pos} declares {count} "
                    f"entries, the limit is {max_container}",
                    code="too_large",
                )
            if len(stack) >= max_depth:  # an empty container is a level too
                raise ProtocolError(
                    f"maps/arrays are nested deeper than {max_depth} levels", code="too_deep"
                )
            pos += 1 + arg
            if count:
                children = count if is_array else 2 * count
                declared += children
                if declared > max_items:
                    raise ProtocolError(
                        f"the frame declares more than {max_items} items", code="too_large"
                    )
                outstanding += children
                if outstanding > end - pos:
                    raise _undecodable(
                        f"frame is truncated: {outstanding} more items are declared at byte "
                        f"{pos} but only {end - pos} bytes remain"
                    )
                stack.append((left, in_map))
                left = children
                in_map = not is_array
                continue
        elif kind == string or kind == binary:
            if pos + 1 + arg > end:
                raise _undecodable(f"frame is truncated in a length prefix at byte {pos}")
            length = int.from_bytes(frame[pos + 1 : pos + 1 + arg], "big")
            if kind == string and length > max_str:
                raise _too_long("str", pos, length, max_str)
            if kind == binary and length > max_bin:
                raise _too_long("bin", pos, length, max_bin)
            pos += 1 + arg + length
        elif kind == _EXT:
            raise _undecodable(
                f"msgpack ext type (tag 0x{tag:02x}) at byte {pos}; "
                "this protocol has no ext types (send dates as ISO-8601 str)"
            )
        else:
            raise _undecodable(f"byte 0x{tag:02x} at {pos} is never used by msgpack")
        while left == 0:
            if not stack:
                if pos > end:
                    raise _undecodable(
                        f"frame is truncated: the last object runs {pos - end} bytes past it"
                    )
                if pos < end:
                    raise _undecodable(f"{end - pos} bytes of extra data after the message")
                return
            left, in_map = stack.pop()


def _too_long(what: str, pos: int, length: int, cap: int) -> ProtocolError:
    return ProtocolError(
        f"a {what} at byte {pos} declares {length} bytes, the limit is {cap}", code="too_large"
    )


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"map repeats the key {_clip(repr(key), 40)}")
            seen.add(key)
    return mapping


def _unpack(frame: bytes, limits: Limits) -> Any:
    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_pairs_to_dict,
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_bin_bytes,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # UnicodeDecodeError, ExtraData, FormatError, StackError, our duplicate key.
        raise _undecodable(f"not a valid msgpack message: {_clip(str(exc), 200)}") from None


# --------------------------------------------------------------------------- messages


class Direction(enum.StrEnum):
    """Which way a message type may travel; the broker checks it per socket."""

    CLIENT_TO_DAEMON = "client->daemon"
    DAEMON_TO_CLIENT = "daemon->client"
    WORKER_TO_DAEMON = "worker->daemon"
    DAEMON_TO_WORKER = "daemon->worker"
    EVENT = "event"


_HEADER_SCHEMA: Final = Schema(
    {
        "msg_id": Str(min_len=1, max_len=128, pattern=_ID_PATTERN, what="id"),
        "msg_type": Str(min_len=1, max_len=64, pattern=_NAME_PATTERN, what="snake_case name"),
        "version": Int(min=0, max=_INT64_MAX),
        "date": Timestamp(),
        "sender": Str(max_len=128, pattern=r"[\x20-\x7e]*", what="printable ASCII label"),
    },
    name="header",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """The header every message carries.

    Parameters
    ----------
    msg_id
        Unique id of the message.
    msg_type
        Registered type name.
    version
        Protocol version of the sender.
    date
        When it was made, ISO-8601 UTC.
    sender
        Free label of the sender.
    """

    msg_id: str
    msg_type: str
    version: int
    date: str
    sender: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the header as the wire map."""
        return {
            "msg_id": self.msg_id,
            "msg_type": self.msg_type,
            "version": self.version,
            "date": self.date,
            "sender": self.sender,
        }

    @classmethod
    def from_dict(cls, value: object, *, where: str = "header") -> Header:
        """Check a wire map and build a header.

        Parameters
        ----------
        value
            The decoded map.
        where
            Its path, for errors.

        Returns
        -------
        Header
            The header.

        Raises
        ------
        ProtocolError
            ``bad_envelope``, naming the bad field.
        """
        try:
            fields = _HEADER_SCHEMA.check(value, where)
        except _Invalid as exc:
            raise ProtocolError(str(exc), code="bad_envelope") from None
        return cls(**fields)


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One protocol message.

    Build it with :func:`new_message` (or :func:`error_message`); get it from
    :func:`decode`. ``content`` is a plain dict with every optional field
    filled in; treat it as read-only.

    Parameters
    ----------
    header
        Its header.
    parent_header
        The header of the request it answers, or None.
    content
        The type-specific fields.
    """

    header: Header
    parent_header: Header | None
    content: dict[str, Any]

    @property
    def msg_type(self) -> str:
        """The message type (``header.msg_type``)."""
        return self.header.msg_type

    @property
    def msg_id(self) -> str:
        """The message id (``header.msg_id``)."""
        return self.header.msg_id

    @property
    def spec(self) -> MessageSpec:
        """The registered spec of this message's type."""
        return REGISTRY[self.header.msg_type]

    def is_reply_to(self, request: Message) -> bool:
        """Return whether this message answers ``request`` (its parent header is its header)."""
        return self.parent_header is not None and self.parent_header.msg_id == request.msg_id

    def to_dict(self) -> dict[str, Any]:
        """Return the wire map (the envelope)."""
        return {
            "header": self.header.to_dict(),
            "parent_header": {} if self.parent_header is None else self.parent_header.to_dict(),
            "content": self.content,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class MessageSpec:
    """The declaration of one message type.

    Parameters
    ----------
    msg_type
        Type name.
    directions
        Ways it may travel.
    content
        Schema of its content.
    replies
        Types that answer it (``error`` may always answer a request).
    example
        A valid content, used by the tests and as documentation.
    doc
        One line on what it is for.
    """

    msg_type: str
    directions: frozenset[Direction]
    content: Schema
    replies: tuple[str, ...]
    example: Mapping[str, Any]
    doc: str


_REGISTRY: dict[str, MessageSpec] = {}
REGISTRY: Final[Mapping[str, MessageSpec]] = MappingProxyType(_REGISTRY)
"""Every message type of this protocol version, by name (read-only)."""


def _define(
    msg_type: str,
    directions: Iterable[Direction],
    content: Mapping[str, Type | Opt] | Schema,
    *,
    example: Mapping[str, Any],
    replies: Sequence[str] = (),
    doc: str,
) -> MessageSpec:
    if msg_type in _REGISTRY:
        raise ValueError(f"message type {msg_type!r} is defined twice")
    if re.fullmatch(_NAME_PATTERN, msg_type) is None:
        raise ValueError(f"message type {msg_type!r} is not snake_case")
    schema = content if isinstance(content, Schema) else Schema(content, name=msg_type)
    spec = MessageSpec(
        msg_type=msg_type,
        directions=frozenset(directions),
        content=schema,
        replies=tuple(replies),
        example=MappingProxyType(dict(example)),
        doc=doc,
    )
    _REGISTRY[msg_type] = spec
    return spec


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_header(parent: Message | Header | None) -> Header | None:
    if parent is None or isinstance(parent, Header):
        return parent
    return parent.header


def _check_content(
    msg_type: str, content: object, header: Header | None, direction: Direction | None
) -> dict[str, Any]:
    spec = _REGISTRY.get(msg_type)
    if spec is None:
        raise ProtocolError(
            f"unknown message type {_clip(repr(msg_type), 70)} in protocol version "
            f"{PROTOCOL_VERSION}; is the peer a different cistemd version?",
            code="unknown_type",
            header=header,
        )
    if direction is not None and direction not in spec.directions:
        allowed = ", ".join(sorted(spec.directions))
        raise ProtocolError(
            f"a {msg_type!r} message may not travel {direction.value} (only {allowed}); "
            "is the peer connected to the right socket?",
            code="wrong_direction",
            header=header,
        )
    try:
        return spec.content.check(content, "content")
    except _Invalid as exc:
        raise ProtocolError(str(exc), code="schema", header=header) from None


def new_message(
    msg_type: str,
    content: Mapping[str, Any] | None = None,
    *,
    parent: Message | Header | None = None,
    sender: str = "",
) -> Message:
    """Build a message with a fresh header, checking its content.

    Parameters
    ----------
    msg_type
        A registered type.
    content
        Its fields (optional ones may be left out); None means ``{}``.
    parent
        The request this message answers, whose header becomes ``parent_header``.
    sender
        Label of the sender (printable ASCII, ≤ 128 characters).

    Returns
    -------
    Message
        The message, content normalised.

    Raises
    ------
    ProtocolError
        ``unknown_type``, ``schema`` or ``bad_envelope`` (bad ``sender``).
    """
    header = Header.from_dict(
        {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
            "date": _now_iso(),
            "sender": sender,
        }
    )
    body = _check_content(msg_type, {} if content is None else dict(content), None, None)
    return Message(header=header, parent_header=_as_header(parent), content=body)


def error_message(
    code: str, reason: str, *, parent: Message | Header | None = None, sender: str = ""
) -> Message:
    """Build an ``error`` message; the reason is clipped to fit.

    Parameters
    ----------
    code
        Stable error code (snake_case), e.g. a :class:`ProtocolError`'s ``code``.
    reason
        What went wrong and what to do about it.
    parent
        The offending request (or its header, e.g. ``ProtocolError.header``).
    sender
        Label of the sender.

    Returns
    -------
    Message
        The error message.
    """
    return new_message(
        "error",
        {"code": code, "reason": _clip(reason, _REASON_MAX)},
        parent=parent,
        sender=sender,
    )


_PACKER_OPTIONS: Final = {"use_bin_type": True, "datetime": False, "unicode_errors": "strict"}


def encode(message: Message, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Check a message and pack it into one frame.

    The content is checked against its schema again (a ``Message`` can be
    built by hand) and the packed frame against ``limits``, so everything
    sent is something the peer accepts.

    Parameters
    ----------
    message
        The message.
    limits
        Limits the frame must respect.

    Returns
    -------
    bytes
        The frame.

    Raises
    ------
    ProtocolError
        Any code :func:`decode` would raise for the frame.
    """
    header = Header.from_dict(message.header.to_dict())
    if header.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"header.version is {header.version}, this module speaks {PROTOCOL_VERSION}",
            code="version_mismatch",
        )
    if message.parent_header is not None:
        Header.from_dict(message.parent_header.to_dict(), where="parent_header")
    content = _check_content(header.msg_type, message.content, header, None)
    wire = {
        "header": header.to_dict(),
        "parent_header": {} if message.parent_header is None else message.parent_header.to_dict(),
        "content": content,
    }
    try:
        frame: bytes = msgpack.packb(wire, **_PACKER_OPTIONS)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a lone surrogate in a str
        raise ProtocolError(
            f"content cannot be packed: {_clip(str(exc), 200)}", code="schema", header=header
        ) from None
    _check_frame_size(len(frame), limits)
    if not _scan_cannot_fail(header.msg_type, len(frame), limits):
        _scan(frame, limits)
    return frame


_CONTENT_DEPTHS: dict[str, int] = {}  # msg_type -> deepest nesting its valid content has


def _scan_cannot_fail(msg_type: str, size: int, limits: Limits) -> bool:
    """Whether :func:`_scan` is sure to pass a frame just packed from checked content.

    Packed from content its schema accepted, a frame has str keys only and no
    ext types; each object takes at least one byte, so a frame of fewer bytes
    than every count limit cannot exceed one; and its nesting is at most one
    (the envelope) more than the schema allows. The decoding peer scans anyway;
    this only spares the sender a second walk of what it built.
    """
    depth = _CONTENT_DEPTHS.get(msg_type)
    if depth is None:
        depth = _CONTENT_DEPTHS[msg_type] = _REGISTRY[msg_type].content.depth()
    return (
        size < min(limits.max_items, limits.max_container_len, limits.max_str_bytes)
        and 1 + depth <= limits.max_depth
    )


def _check_frame_size(size: int, limits: Limits) -> None:
    if size > limits.max_frame_bytes:
        raise ProtocolError(
            f"frame is {size} bytes, the limit is {limits.max_frame_bytes}; put big data in "
            "files on the shared filesystem and send their paths",
            code="frame_too_large",
        )


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    direction: Direction | None = None,
    limits: Limits = DEFAULT_LIMITS,
    stats: ProtocolStats | None = None,
) -> Message:
    """Check and decode one frame.

    Checks, in order: size, msgpack structure (depth, items, lengths, str
    keys, no ext), envelope, version, header, message type, direction,
    content schema. Costs O(len(frame)) time and memory at most, whatever
    the bytes.

    Parameters
    ----------
    frame
        The message frame (without the ROUTER identity).
    direction
        If given, the way the frame travelled; a type that may not travel
        this way is refused (``wrong_direction``).
    limits
        Size and shape limits.
    stats
        If given, the outcome is counted there.

    Returns
    -------
    Message
        The message, content normalised (defaults filled in).

    Raises
    ------
    ProtocolError
        For any bad input -- and nothing else. Its ``header`` is set when the
        header could be read, so an error reply can name its parent.
    """
    try:
        message = _decode(frame, direction, limits)
    except ProtocolError as exc:
        if stats is not None:
            stats.record_error(exc)
        raise
    except Exception as exc:  # a bug here must not take the daemon down
        logger.exception("internal error while decoding a %s-byte frame", _safe_len(frame))
        error = ProtocolError(
            f"internal error in cistemd while decoding ({type(exc).__name__}); please report it",
            code="internal",
        )
        if stats is not None:
            stats.record_error(error)
        raise error from exc
    if stats is not None:
        stats.record_ok(message.msg_type)
    return message


def _safe_len(frame: object) -> int:
    try:
        return len(frame)  # type: ignore[arg-type]
    except TypeError:
        return -1


def _decode(frame: object, direction: Direction | None, limits: Limits) -> Message:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise _undecodable(f"expected a bytes frame, got {_type_name(frame)}")
    if isinstance(frame, memoryview):
        if frame.ndim != 1 or frame.itemsize != 1:
            raise _undecodable("expected a 1-d byte buffer")
        _check_frame_size(frame.nbytes, limits)
    else:
        _check_frame_size(len(frame), limits)
    data = bytes(frame)
    _scan(data, limits)
    root = _unpack(data, limits)

    if not isinstance(root, dict):
        raise ProtocolError(
            f"a message is a map with header, parent_header and content; got {_got(root)}",
            code="bad_envelope",
        )
    if set(root) != {"header", "parent_header", "content"}:
        keys = ", ".join(_clip(repr(key), 30) for key in list(root)[:8])
        raise ProtocolError(
            "a message map has exactly the keys header, parent_header and content; "
            f"got {keys or 'none'}",
            code="bad_envelope",
        )
    raw_header = root["header"]
    version = raw_header.get("version") if isinstance(raw_header, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version != PROTOCOL_VERSION:
        try:
            readable: Header | None = Header.from_dict(raw_header)
        except ProtocolError:
            readable = None
        raise ProtocolError(
            f"the peer speaks protocol version {_clip(str(version), 20)}, this cistemd speaks "
            f"version {PROTOCOL_VERSION}; run the same cistemd release on both ends",
            code="version_mismatch",
            header=readable,
        )
    header = Header.from_dict(raw_header)
    raw_parent = root["parent_header"]
    parent: Header | None = None
    if raw_parent != {}:
        try:
            parent = Header.from_dict(raw_parent, where="parent_header")
        except ProtocolError as exc:
            exc.header = header
            raise
    content = _check_content(header.msg_type, root["content"], header, direction)
    return Message(header=header, parent_header=parent, content=content)


# --------------------------------------------------------------------------- ROUTER frames


def split_router_frames(frames: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Split a multipart message received on a ROUTER socket.

    A DEALER peer sends one frame per message, so the ROUTER receives
    ``[identity, payload]``.

    Parameters
    ----------
    frames
        The received frames.

    Returns
    -------
    tuple of bytes
        ``(identity, payload)``.

    Raises
    ------
    ProtocolError
        ``bad_envelope`` for any other frame count; its ``identity`` is set
        when there was a first frame, so the peer can still be answered.
    """
    if len(frames) != 2:
        identity = bytes(frames[0]) if len(frames) >= 1 else None
        raise ProtocolError(
            f"expected 2 frames (identity, message) on a ROUTER socket, got {len(frames)}; "
            "connect with a DEALER socket and send each message as one frame",
            code="bad_envelope",
            identity=identity,
        )
    identity, payload = bytes(frames[0]), frames[1]
    if not 1 <= len(identity) <= _ROUTER_IDENTITY_MAX:
        raise ProtocolError(
            f"a ROUTER identity is 1 to {_ROUTER_IDENTITY_MAX} bytes, got {len(identity)}",
            code="bad_envelope",
        )
    return identity, bytes(payload)


def join_router_frames(identity: bytes, payload: bytes) -> list[bytes]:
    """Build the frames to send to ``identity`` through a ROUTER socket.

    Parameters
    ----------
    identity
        The peer's routing id, as returned by :func:`split_router_frames`.
    payload
        The frame from :func:`encode`.

    Returns
    -------
    list of bytes
        ``[identity, payload]``.

    Raises
    ------
    ProtocolError
        ``bad_envelope`` for an empty or over-long identity or non-bytes frames.
    """
    if not isinstance(identity, bytes) or not isinstance(payload, bytes):
        raise ProtocolError("identity and payload must be bytes", code="bad_envelope")
    if not 1 <= len(identity) <= _ROUTER_IDENTITY_MAX:
        raise ProtocolError(
            f"a ROUTER identity is 1 to {_ROUTER_IDENTITY_MAX} bytes, got {len(identity)}",
            code="bad_envelope",
        )
    return [identity, payload]


# --------------------------------------------------------------------------- statistics


class ProtocolStats:
    """Counts of accepted and refused messages, for the daemon's status.

    Thread-safe. Keeps the last few refusals (code and reason) for display.

    Parameters
    ----------
    keep_last
        How many recent refusals to keep.
    """

    def __init__(self, *, keep_last: int = 20) -> None:
        self._lock = threading.Lock()
        self._errors: Counter[str] = Counter()
        self._accepted: Counter[str] = Counter()
        self._recent: deque[tuple[str, str]] = deque(maxlen=keep_last)

    def record_ok(self, msg_type: str) -> None:
        """Count one accepted message of ``msg_type``.

        Parameters
        ----------
        msg_type
            Its type.
        """
        with self._lock:
            self._accepted[msg_type] += 1

    def record_error(self, error: ProtocolError | str, reason: str = "") -> None:
        """Count one refused message.

        Parameters
        ----------
        error
            The error raised, or just its code.
        reason
            The reason, when ``error`` is a code.
        """
        code, text = (
            (error.code, error.reason)
            if isinstance(error, ProtocolError)
            else (
                error,
                reason,
            )
        )
        with self._lock:
            self._errors[code] += 1
            self._recent.append((code, _clip(text, 300)))

    @property
    def errors(self) -> dict[str, int]:
        """Refused messages by error code."""
        with self._lock:
            return dict(self._errors)

    @property
    def accepted(self) -> dict[str, int]:
        """Accepted messages by type."""
        with self._lock:
            return dict(self._accepted)

    @property
    def total_errors(self) -> int:
        """All refused messages."""
        with self._lock:
            return sum(self._errors.values())

    @property
    def recent_errors(self) -> list[tuple[str, str]]:
        """The last refusals, oldest first, as ``(code, reason)``."""
        with self._lock:
            return list(self._recent)

    def snapshot(self) -> dict[str, Any]:
        """Return all counts as a JSON-like map (for ``status_reply``).

        Returns
        -------
        dict
            ``{"accepted": {type: n}, "errors": {code: n}, "recent_errors": [[code, reason]]}``.
        """
        with self._lock:
            return {
                "accepted": dict(self._accepted),
                "errors": dict(self._errors),
                "recent_errors": [list(item) for item in self._recent],
            }


# --------------------------------------------------------------------------- message types

_C2D, _D2C = Direction.CLIENT_TO_DAEMON, Direction.DAEMON_TO_CLIENT
_W2D, _D2W = Direction.WORKER_TO_DAEMON, Direction.DAEMON_TO_WORKER

_ID: Final = Str(min_len=1, max_len=128, pattern=_ID_PATTERN, what="id")
_ID_OR_EMPTY: Final = Str(max_len=128, pattern=f"(?:{_ID_PATTERN})?", what="id or ''")
_NAME: Final = _NAME_KEY
_PATH: Final = Str(min_len=1, max_len=4096, pattern=r"[^\x00]+", what="path (no NUL)")
_PATH_OR_EMPTY: Final = Str(max_len=4096, pattern=r"[^\x00]*", what="path or ''")
_REASON: Final = Str(max_len=_REASON_MAX)
_LABEL: Final = Str(max_len=256)
_ATTEMPT: Final = Int(min=1, max=1_000_000)
_COUNT: Final = Int(min=0)
_EVENT_ID: Final = Int(min=0)
_FRACTION: Final = Float(min=0.0, max=1.0)
_PARAMETERS: Final = Dict(Value(max_depth=6), max_len=1024)
_COUNTS: Final = Dict(_COUNT, max_len=256)

_EVENT: Final = Schema(
    {
        "event_id": Int(min=1),
        "job_id": _ID_OR_EMPTY,
        "kind": Str(choices=("state", "progress", "log")),
        "payload": Dict(Value(max_depth=4), max_len=256),
        "time": Timestamp(),
    },
    name="EVENT",
)
_JOB: Final = Schema(
    {
        "job_id": _ID,
        "project": _PATH,
        "action": _NAME,
        "profile": _LABEL,
        "state": _NAME,
        "submitted": Timestamp(),
        "progress": _FRACTION,
        "tasks": Opt(Dict(_COUNT, max_len=64, key=_NAME_KEY), {}),
        "parameters": Opt(_PARAMETERS, {}),
        "message": Opt(_REASON, ""),
    },
    name="JOB",
)

_T0: Final = "2024-05-01T12:00:00.000000Z"
_EXAMPLE_EVENT: Final = {
    "event_id": 42,
    "job_id": "j7",
    "kind": "progress",
    "payload": {"fraction": 0.25, "done": 3, "total": 12},
    "time": _T0,
}
_EXAMPLE_JOB: Final = {
    "job_id": "j7",
    "project": "/data/apoferritin",
    "action": "ctffind",
    "profile": "Default Local",
    "state": "running",
    "submitted": _T0,
    "progress": 0.25,
    "tasks": {"done": 3, "running": 4, "queued": 5},
    "parameters": {"pixel_size_angstroms": 1.06, "box_size": 512},
    "message": "",
}

# client <-> daemon
_define("ping", [_C2D], {}, example={}, replies=["pong"], doc="Is the daemon alive?")
_define("pong", [_D2C], {}, example={}, doc="Answer to ping.")
_define(
    "error",
    [_D2C, _D2W, _W2D],
    {
        "code": Str(min_len=1, max_len=64, pattern=_NAME_PATTERN, what="error code"),
        "reason": _REASON,
    },
    example={"code": "no_such_job", "reason": "no job 'j9' in this project; see `cistem jobs`"},
    doc="A request failed; never answered.",
)
_define("status_request", [_C2D], {}, example={}, replies=["status_reply"], doc="Daemon status.")
_define(
    "status_reply",
    [_D2C],
    {
        "pid": Int(min=1),
        "version": Str(max_len=64),
        "protocol_version": Int(min=0),
        "uptime_s": Float(min=0.0),
        "projects": List(_PATH, max_len=1000),
        "workers": _COUNT,
        "jobs": _COUNTS,
        "protocol_errors": Opt(_COUNTS, {}),
    },
    example={
        "pid": 4242,
        "version": "0.1.0",
        "protocol_version": PROTOCOL_VERSION,
        "uptime_s": 12.5,
        "projects": ["/data/apoferritin"],
        "workers": 8,
        "jobs": {"running": 1, "finished": 3},
        "protocol_errors": {"undecodable": 2},
    },
    doc="Daemon pid, software and protocol versions, uptime, open projects, counts.",
)
_define(
    "project_create",
    [_C2D],
    {"path": _PATH, "name": Opt(_LABEL, "")},
    example={"path": "/data/apoferritin", "name": "apoferritin"},
    replies=["project_reply"],
    doc="Create a project directory and database (name defaults to the directory's).",
)
_define(
    "project_open",
    [_C2D],
    {"path": _PATH},
    example={"path": "/data/apoferritin"},
    replies=["project_reply"],
    doc="Open an existing project in the daemon.",
)
_define(
    "project_info",
    [_C2D],
    {"path": _PATH},
    example={"path": "/data/apoferritin"},
    replies=["project_reply"],
    doc="Describe an open project.",
)
_define(
    "project_reply",
    [_D2C],
    {"path": _PATH, "name": _LABEL, "counts": Opt(_COUNTS, {})},
    example={"path": "/data/apoferritin", "name": "apoferritin", "counts": {"movie_assets": 48}},
    doc="A project: its path, name and asset counts by kind.",
)
_define(
    "job_submit",
    [_C2D],
    {
        "project": _PATH,
        "action": _NAME,
        "parameters": Opt(_PARAMETERS, {}),
        "profile": Opt(_LABEL, ""),
    },
    example={
        "project": "/data/apoferritin",
        "action": "ctffind",
        "parameters": {"pixel_size_angstroms": 1.06, "box_size": 512, "groups": ["all"]},
        "profile": "Default Local",
    },
    replies=["job_submitted"],
    doc="Run an action on a project with a run profile ('' = the project's default).",
)
_define("job_submitted", [_D2C], {"job_id": _ID}, example={"job_id": "j7"}, doc="A job was queued.")
_define(
    "job_cancel",
    [_C2D],
    {"job_id": _ID},
    example={"job_id": "j7"},
    replies=["job_reply"],
    doc="Cancel a job; the reply shows its new state.",
)
_define(
    "job_show",
    [_C2D],
    {"job_id": _ID},
    example={"job_id": "j7"},
    replies=["job_reply"],
    doc="Describe one job.",
)
_define("job_reply", [_D2C], {"job": _JOB}, example={"job": _EXAMPLE_JOB}, doc="One job.")
_define(
    "jobs_list",
    [_C2D],
    {
        "project": Opt(_PATH_OR_EMPTY, ""),
        "states": Opt(List(_NAME, max_len=32), []),
        "limit": Opt(Int(min=1, max=1000), 200),
        "offset": Opt(Int(min=0), 0),
    },
    example={"project": "/data/apoferritin", "states": ["running"], "limit": 50, "offset": 0},
    replies=["jobs_reply"],
    doc="List jobs, newest first, optionally of one project and in some states.",
)
_define(
    "jobs_reply",
    [_D2C],
    {"jobs": List(_JOB, max_len=1000), "total": _COUNT},
    example={"jobs": [_EXAMPLE_JOB], "total": 1},
    doc="A page of jobs and how many match in all.",
)
_define(
    "job_log",
    [_C2D],
    {
        "job_id": _ID,
        "since_event_id": Opt(_EVENT_ID, 0),
        "limit": Opt(Int(min=1, max=2000), 500),
    },
    example={"job_id": "j7", "since_event_id": 40, "limit": 100},
    replies=["job_log_reply"],
    doc="Stored events of a job after since_event_id.",
)
_define(
    "job_log_reply",
    [_D2C],
    {
        "job_id": _ID,
        "events": List(_EVENT, max_len=2000),
        "last_event_id": _EVENT_ID,
        "more": Bool(),
    },
    example={"job_id": "j7", "events": [_EXAMPLE_EVENT], "last_event_id": 42, "more": False},
    doc="A page of a job's events; ask again from last_event_id while more.",
)
_define(
    "subscribe",
    [_C2D],
    {"since_event_id": Opt(_EVENT_ID, 0), "job_id": Opt(_ID_OR_EMPTY, "")},
    example={"since_event_id": 0, "job_id": ""},
    replies=["subscribed"],
    doc="Replay stored events after since_event_id and give the PUB endpoint.",
)
_define(
    "subscribed",
    [_D2C],
    {
        "pub_endpoint": Str(min_len=1, max_len=1024),
        "events": List(_EVENT, max_len=2000),
        "last_event_id": _EVENT_ID,
        "more": Bool(),
    },
    example={
        "pub_endpoint": "ipc:///run/user/1000/cistemd/events",
        "events": [_EXAMPLE_EVENT],
        "last_event_id": 42,
        "more": False,
    },
    doc="The replay page and where live events are published.",
)

_IMPORT_KINDS: Final = ("movies", "images", "positions", "volumes", "refinement_package")
_LIST_KINDS: Final = (
    "movies", "images", "positions", "volumes", "packages", "refinements", "ctf_estimates",
)  # fmt: skip
_GROUP_KINDS: Final = ("movie", "image", "particle_position", "volume", "atomic_coordinates")
_GROUP_OPERATIONS: Final = ("create", "rename", "delete", "add", "remove", "from_movie_group")
_ROW: Final = Dict(Value(max_depth=3), max_len=256)
_GROUP: Final = Schema(
    {"group_id": _COUNT, "name": _LABEL, "count": _COUNT, "implicit": Bool()}, name="GROUP"
)
_TASK: Final = Schema(
    {
        "task_id": _ID,
        "key": _LABEL,
        "stage": _COUNT,
        "label": _LABEL,
        "state": _NAME,
        "attempt": _COUNT,
        "failures": _COUNT,
        "worker_id": _LABEL,
        "host": _LABEL,
        "reason": _REASON,
        "evidence": List(Value(max_depth=3), max_len=16),
    },
    name="TASK",
)
_RESULT: Final = Schema(
    {
        "task_id": _ID,
        "key": _LABEL,
        "attempt": _ATTEMPT,
        "worker_id": _LABEL,
        "result": Dict(Value(max_depth=5), max_len=1024),
        "output_files": List(_PATH, max_len=1000),
        "elapsed_s": Float(min=0.0),
        "recorded_at": _LABEL,
    },
    name="RESULT",
)
_define(
    "assets_import",
    [_C2D],
    {
        "project": _PATH,
        "kind": Str(choices=_IMPORT_KINDS),
        "paths": List(_PATH, min_len=1, max_len=500),
        "options": Opt(Dict(Value(max_depth=2), max_len=64, key=_NAME_KEY), {}),
    },
    example={
        "project": "/data/apoferritin",
        "kind": "movies",
        "paths": ["/data/raw/movie_0001.tif", "/data/raw/movie_0002.tif"],
        "options": {
            "voltage_kv": 300.0,
            "spherical_aberration_mm": 2.7,
            "pixel_size_angstroms": 1.06,
            "exposure_per_frame": 1.2,
            "gain_filename": "/data/raw/gain.mrc",
        },
    },
    replies=["assets_imported"],
    doc="Import assets into a project (all of paths or none).",
)
_define(
    "assets_imported",
    [_D2C],
    {
        "kind": Str(choices=_IMPORT_KINDS),
        "ids": List(_COUNT, max_len=500),
        "count": _COUNT,
        "warnings": List(_REASON, max_len=100),
    },
    example={"kind": "movies", "ids": [1, 2], "count": 2, "warnings": []},
    doc="What an import added: new asset ids (positions: only the count) and warnings.",
)
_define(
    "assets_list",
    [_C2D],
    {
        "project": _PATH,
        "kind": Str(choices=_LIST_KINDS),
        "group_id": Opt(_COUNT, 0),
        "limit": Opt(Int(min=1, max=1000), 200),
        "offset": Opt(_COUNT, 0),
    },
    example={"project": "/data/apoferritin", "kind": "movies", "group_id": 0, "limit": 50},
    replies=["assets_reply"],
    doc="List a project's assets of one kind (optionally of one group).",
)
_define(
    "assets_reply",
    [_D2C],
    {"kind": Str(choices=_LIST_KINDS), "assets": List(_ROW, max_len=1000), "total": _COUNT},
    example={
        "kind": "movies",
        "assets": [
            {"movie_asset_id": 1, "filename": "/data/raw/movie_0001.tif", "pixel_size": 1.06}
        ],
        "total": 1,
    },
    doc="A page of asset rows and how many there are in all.",
)
_define(
    "groups_list",
    [_C2D],
    {
        "project": _PATH,
        "kind": Str(choices=_GROUP_KINDS),
        "group_id": Opt(Int(min=-1), -1),
        "offset": Opt(_COUNT, 0),
        "limit": Opt(Int(min=1, max=10_000), 10_000),
    },
    example={"project": "/data/apoferritin", "kind": "movie", "group_id": 1},
    replies=["groups_reply"],
    doc="List the groups of one kind (and a page of one group's members).",
)
_define(
    "groups_edit",
    [_C2D],
    {
        "project": _PATH,
        "kind": Str(choices=_GROUP_KINDS),
        "operation": Str(choices=_GROUP_OPERATIONS),
        "group_id": Opt(_COUNT, 0),
        "name": Opt(_LABEL, ""),
        "asset_ids": Opt(List(Int(min=1), max_len=10_000), []),
    },
    example={
        "project": "/data/apoferritin",
        "kind": "movie",
        "operation": "add",
        "group_id": 1,
        "asset_ids": [1, 2, 3],
    },
    replies=["groups_reply"],
    doc="Create, rename, delete or fill a group; the reply lists the groups after it.",
)
_define(
    "groups_reply",
    [_D2C],
    {
        "kind": Str(choices=_GROUP_KINDS),
        "groups": List(_GROUP, max_len=10_000),
        "group_id": Opt(Int(min=-1), -1),
        "changed": Opt(_COUNT, 0),
        "members": Opt(List(_COUNT, max_len=10_000), []),
        "members_total": Opt(_COUNT, 0),
    },
    example={
        "kind": "movie",
        "groups": [
            {"group_id": 0, "name": "All Movies", "count": 48, "implicit": True},
            {"group_id": 1, "name": "good", "count": 3, "implicit": False},
        ],
        "group_id": 1,
        "changed": 3,
        "members": [1, 2, 3],
        "members_total": 3,
    },
    doc="The groups of one kind; the group acted on, how many members changed, members.",
)
_define(
    "job_tasks",
    [_C2D],
    {
        "job_id": _ID,
        "states": Opt(List(_NAME, max_len=32), []),
        "limit": Opt(Int(min=1, max=1000), 100),
        "offset": Opt(_COUNT, 0),
    },
    example={"job_id": "j7", "states": ["failed"], "limit": 100, "offset": 0},
    replies=["job_tasks_reply"],
    doc="A page of one job's tasks with their states and failure evidence.",
)
_define(
    "job_tasks_reply",
    [_D2C],
    {"job_id": _ID, "tasks": List(_TASK, max_len=1000), "total": _COUNT},
    example={
        "job_id": "j7",
        "tasks": [
            {
                "task_id": "12",
                "key": "task_0003",
                "stage": 0,
                "label": "",
                "state": "failed",
                "attempt": 3,
                "failures": 3,
                "worker_id": "",
                "host": "node07",
                "reason": "killed its worker 3 times",
                "evidence": [{"exit_code": -11, "stderr_tail": "Segmentation fault"}],
            }
        ],
        "total": 1,
    },
    doc="A page of tasks and how many match in all.",
)
_define(
    "job_results",
    [_C2D],
    {"job_id": _ID, "limit": Opt(Int(min=1, max=1000), 100), "offset": Opt(_COUNT, 0)},
    example={"job_id": "j7", "limit": 100, "offset": 0},
    replies=["job_results_reply"],
    doc="A page of the results a job recorded.",
)
_define(
    "job_results_reply",
    [_D2C],
    {"job_id": _ID, "results": List(_RESULT, max_len=1000), "total": _COUNT},
    example={
        "job_id": "j7",
        "results": [
            {
                "task_id": "12",
                "key": "task_0003",
                "attempt": 1,
                "worker_id": "w-node07-1234",
                "result": {"slept_s": 0.2},
                "output_files": ["/data/apoferritin/Scratch/job_7/task_0003.attempt_1"],
                "elapsed_s": 0.21,
                "recorded_at": _T0,
            }
        ],
        "total": 1,
    },
    doc="A page of results and how many there are in all.",
)

# worker <-> daemon
_define(
    "worker_hello",
    [_W2D],
    {
        "worker_id": _ID,
        "job_id": _ID_OR_EMPTY,
        "host": Str(min_len=1, max_len=255),
        "pid": Int(min=1),
        "protocol_version": Int(min=0),
        "threads": Int(min=1, max=65_536),
        "prefetch": Opt(Int(min=1, max=64), 1),
    },
    example={
        "worker_id": "w-node07-1234",
        "job_id": "j7",
        "host": "node07",
        "pid": 1234,
        "protocol_version": PROTOCOL_VERSION,
        "threads": 4,
        "prefetch": 8,
    },
    replies=["worker_welcome"],
    doc="First message of a worker.",
)
_define(
    "worker_welcome",
    [_D2W],
    {
        "heartbeat_interval_s": Float(min=0.0, max=3600.0, min_exclusive=True),
        "liveness": Int(min=1, max=100),
    },
    example={"heartbeat_interval_s": 1.0, "liveness": 3},
    doc="The daemon accepts the worker and sets the heartbeat rules.",
)
_define(
    "heartbeat",
    [_W2D, _D2W],
    {"task_id": Opt(_ID_OR_EMPTY, ""), "attempt": Opt(Int(min=0, max=1_000_000), 0)},
    example={"task_id": "t12", "attempt": 1},
    doc="I am alive (a worker names its current task, if any).",
)
_define("task_request", [_W2D], {}, example={}, replies=["task_assign"], doc="Give me a task.")
_define(
    "task_assign",
    [_D2W],
    {
        "task_id": _ID,
        "attempt": _ATTEMPT,
        "action": _NAME,
        "parameters": _PARAMETERS,
        "lease_s": Float(min=0.0, max=7 * 24 * 3600.0, min_exclusive=True),
    },
    example={
        "task_id": "t12",
        "attempt": 1,
        "action": "ctffind",
        "parameters": {"movie": "/data/apoferritin/Assets/Movies/m1.tif", "box_size": 512},
        "lease_s": 600.0,
    },
    doc="Run this task attempt.",
)
_define(
    "task_progress",
    [_W2D],
    {
        "task_id": _ID,
        "attempt": _ATTEMPT,
        "fraction": _FRACTION,
        "message": Opt(Str(max_len=1024), ""),
    },
    example={"task_id": "t12", "attempt": 1, "fraction": 0.5, "message": "fitting"},
    doc="How far the task attempt is.",
)
_define(
    "task_result",
    [_W2D],
    {
        "task_id": _ID,
        "attempt": _ATTEMPT,
        "result": _PARAMETERS,
        "output_files": Opt(List(_PATH, max_len=4096), []),
        "elapsed_s": Opt(Float(min=0.0), 0.0),
    },
    example={
        "task_id": "t12",
        "attempt": 1,
        "result": {"defocus_1_angstroms": 12000.0, "defocus_2_angstroms": 11800.0},
        "output_files": ["/data/apoferritin/Scratch/t12/diagnostic.mrc"],
        "elapsed_s": 3.2,
    },
    doc="The task attempt finished; files are in Scratch/.",
)
_define(
    "task_error",
    [_W2D],
    {
        "task_id": _ID,
        "attempt": _ATTEMPT,
        "reason": _REASON,
        "traceback": Opt(Str(max_len=4096), ""),
    },
    example={
        "task_id": "t12",
        "attempt": 1,
        "reason": "cannot read m1.tif: truncated file",
        "traceback": 'File "ctffind.py", line 10\nInvalidInputError: truncated',
    },
    doc="The task attempt failed; traceback is the last 4096 characters.",
)
_define(
    "task_cancel",
    [_D2W],
    {"task_id": _ID, "attempt": _ATTEMPT, "reason": Opt(_REASON, "")},
    example={"task_id": "t12", "attempt": 1, "reason": "job cancelled"},
    doc="Stop this task attempt.",
)
_define(
    "worker_shutdown",
    [_D2W],
    {"reason": _REASON},
    example={"reason": "job finished"},
    doc="Finish up and exit.",
)
_define(
    "worker_bye",
    [_W2D],
    {"reason": Opt(_REASON, "")},
    example={"reason": "shutdown requested"},
    doc="The worker is exiting.",
)

# events
_define(
    "event",
    [Direction.EVENT],
    _EVENT,
    example=_EXAMPLE_EVENT,
    doc="A job state change, progress or log line.",
)

# actions, pictures and result queries for the TUI (issue 8)
_PARAMETER: Final = Schema(
    {
        "name": _NAME,
        "kind": Str(choices=("float", "int", "bool", "str", "path")),
        "default": Value(max_depth=2),
        "help": _REASON,
        "minimum": Value(max_depth=0),
        "maximum": Value(max_depth=0),
        "choices": Value(max_depth=1),
        "expert": Bool(),
    },
    name="PARAMETER",
)
_ACTION: Final = Schema(
    {"name": _NAME, "title": _LABEL, "parameters": List(_PARAMETER, max_len=256)},
    name="ACTION",
)
_define("actions_list", [_C2D], {}, example={}, replies=["actions_reply"], doc="List actions.")
_define(
    "actions_reply",
    [_D2C],
    {"actions": List(_ACTION, max_len=256), "problems": Opt(List(_REASON, max_len=256), [])},
    example={
        "actions": [
            {
                "name": "selftest",
                "title": "Self test",
                "parameters": [
                    {
                        "name": "tasks",
                        "kind": "int",
                        "default": 10,
                        "help": "number of tasks",
                        "minimum": 1,
                        "maximum": None,
                        "choices": None,
                        "expert": False,
                    }
                ],
            }
        ],
        "problems": [],
    },
    doc="Every registered action with its title and parameters (a form each).",
)
_PREVIEW_SOURCES: Final = ("image", "movie", "volume", "ctf_estimate", "file")
_PREVIEW_WHICH: Final = ("image", "spectrum", "scaled", "ctf_diagnostic", "volume_orth")
PREVIEW_MAX_SIZE: Final = 512
"""Largest edge of an ``image_preview`` picture, in pixels."""
_define(
    "image_preview",
    [_C2D],
    {
        "project": _PATH,
        "source": Str(choices=_PREVIEW_SOURCES),
        "asset_id": Opt(_COUNT, 0),
        "path": Opt(_PATH_OR_EMPTY, ""),
        "which": Opt(Str(choices=_PREVIEW_WHICH), "image"),
        "max_size": Opt(Int(min=16, max=PREVIEW_MAX_SIZE), 256),
    },
    example={
        "project": "/data/apoferritin",
        "source": "image",
        "asset_id": 3,
        "which": "spectrum",
        "max_size": 256,
    },
    replies=["image_reply"],
    doc="A small 8-bit picture of an image, spectrum, CTF diagnostic or volume.",
)
_define(
    "image_reply",
    [_D2C],
    {
        "width": Int(min=1, max=PREVIEW_MAX_SIZE),
        "height": Int(min=1, max=PREVIEW_MAX_SIZE),
        "pixels": Bytes(max_len=PREVIEW_MAX_SIZE * PREVIEW_MAX_SIZE),
        "file": _PATH_OR_EMPTY,
        "original_width": _COUNT,
        "original_height": _COUNT,
        "original_depth": _COUNT,
        "pixel_size_angstroms": Float(min=0.0),
        "scale": Float(min=0.0, min_exclusive=True),
    },
    example={
        "width": 4,
        "height": 2,
        "pixels": bytes(range(0, 255, 32)),
        "file": "/data/apoferritin/Assets/Images/m1_1_0.mrc",
        "original_width": 4096,
        "original_height": 2048,
        "original_depth": 1,
        "pixel_size_angstroms": 1.06,
        "scale": 1 / 1024,
    },
    doc="The picture: width x height grey bytes, top row first, and its geometry.",
)
RESULT_QUERIES: Final = (
    "ctf_table", "ctf_fit", "alignments", "alignment_shifts", "picked_images", "picks", "fsc",
)  # fmt: skip
"""The read-only queries ``results_query`` answers."""
_define(
    "results_query",
    [_C2D],
    {
        "project": _PATH,
        "query": Str(choices=RESULT_QUERIES),
        "parameters": Opt(Dict(Value(max_depth=3), max_len=64, key=_NAME_KEY), {}),
        "limit": Opt(Int(min=1, max=10_000), 500),
        "offset": Opt(_COUNT, 0),
    },
    example={
        "project": "/data/apoferritin",
        "query": "ctf_table",
        "parameters": {"sort": "fit_resolution", "filters": {"fit_resolution": [None, 5.0]}},
        "limit": 100,
        "offset": 0,
    },
    replies=["results_reply"],
    doc="Read result tables and curves (CTF, alignments, picks, FSC) of a project.",
)
_define(
    "results_reply",
    [_D2C],
    {
        "query": Str(choices=RESULT_QUERIES),
        "rows": List(_ROW, max_len=10_000),
        "total": _COUNT,
        "data": Opt(Dict(Value(max_depth=4), max_len=256), {}),
    },
    example={
        "query": "ctf_table",
        "rows": [{"image_asset_id": 1, "defocus1": 12000.0, "fit_resolution": 3.9}],
        "total": 1,
        "data": {},
    },
    doc="A page of result rows, how many there are, and query-specific data (curves).",
)

# run profiles
_PROFILE: Final = Dict(Value(max_depth=5), max_len=64)
_PROFILE_NAME: Final = Str(min_len=1, max_len=200, pattern=r"[^/\\\x00\n\"]+", what="profile name")
_EXAMPLE_PROFILE: Final = {
    "name": "SSH cluster",
    "manager_command": "$command",
    "gui_address": "",
    "controller_address": "",
    "commands": [
        {
            "command_to_run": "$command",
            "number_of_copies": 2,
            "threads_per_copy": 1,
            "delay_ms": 10,
            "override_total_copies": False,
            "overridden_total_copies": 0,
            "host": "node07",
        }
    ],
    "launcher": "ssh",
    "worker_python": "",
    "ssh": {"known_hosts": "", "keepalive_s": 5.0},
    "scheduler": {"kind": "slurm", "mode": "batch"},
}
_define(
    "profiles_list",
    [_C2D],
    {},
    example={},
    replies=["profiles_reply"],
    doc="List the run profiles.",
)
_define(
    "profile_save",
    [_C2D],
    {"profile": _PROFILE},
    example={"profile": _EXAMPLE_PROFILE},
    replies=["profiles_reply"],
    doc="Create or replace a run profile.",
)
_define(
    "profile_delete",
    [_C2D],
    {"name": _PROFILE_NAME},
    example={"name": "SSH cluster"},
    replies=["profiles_reply"],
    doc="Delete a stored run profile.",
)
_define(
    "profiles_import",
    [_C2D],
    {"text": Str(max_len=256 * 1024)},
    example={"text": "number_of_profiles=0\n"},
    replies=["profiles_reply"],
    doc="Import cisTEM's default_run_profiles.txt.",
)
_define(
    "profiles_export",
    [_C2D],
    {"names": Opt(List(_PROFILE_NAME, max_len=1000), [])},
    example={"names": ["SSH cluster"]},
    replies=["profiles_text"],
    doc="Export run profiles in cisTEM's default_run_profiles.txt format.",
)
_define(
    "profiles_reply",
    [_D2C],
    {
        "profiles": List(_PROFILE, max_len=1000),
        "names": Opt(List(_PROFILE_NAME, max_len=1000), []),
    },
    example={"profiles": [_EXAMPLE_PROFILE], "names": ["SSH cluster"]},
    doc="The run profiles after a change; names saved or imported.",
)
_define(
    "profiles_text",
    [_D2C],
    {"text": Str(max_len=256 * 1024)},
    example={"text": "number_of_profiles=0\n"},
    doc="Run profiles in cisTEM's text format.",
)
_define(
    "positions_edit",
    [_C2D],
    {
        "project": _PATH,
        "operation": Str(choices=("add", "remove")),
        "image_asset_id": Int(min=1),
        "x": Opt(List(Float(), max_len=10_000), []),
        "y": Opt(List(Float(), max_len=10_000), []),
        "position_ids": Opt(List(Int(min=1), max_len=10_000), []),
        "radius_angstroms": Opt(Float(min=0.0), 50.0),
    },
    example={
        "project": "/data/apoferritin",
        "operation": "add",
        "image_asset_id": 3,
        "x": [512.5, 1020.0],
        "y": [300.0, 811.25],
    },
    replies=["positions_reply"],
    doc="Add or remove particle positions on one image (manual editing of picks).",
)
_define(
    "positions_reply",
    [_D2C],
    {
        "image_asset_id": Int(min=1),
        "operation": Str(choices=("add", "remove")),
        "position_ids": List(Int(min=1), max_len=10_000),
        "total": _COUNT,
    },
    example={"image_asset_id": 3, "operation": "add", "position_ids": [41, 42], "total": 42},
    doc="The positions added or removed and how many the image holds now.",
)
