"""The action interface: what the daemon plans, what a worker runs, what gets recorded.

An *action* is one of cisTEM's GUI actions (Align Movies, Find CTF, ...) or a
utility (simulate, the ``selftest`` diagnostic). Each lives in its own module
in :mod:`cistemd.actions` and subclasses :class:`Action`. The same class is used
on both sides of the broker, in three roles:

1. **Daemon, when a job is submitted** -- :meth:`Action.validate` fills in
   cisTEM's defaults and checks every parameter (raising
   :class:`~cistemd.errors.InvalidInputError` that names the field); then
   :meth:`Action.start` returns the first :class:`Stage` of tasks plus a
   JSON-like *plan state*. The daemon stores both before acknowledging the job.
2. **Worker** -- :meth:`Action.run_task` runs one task's kernel on files from
   the shared filesystem, writes outputs under ``context.scratch_dir`` and
   returns a small JSON-like result (big arrays travel as files).
3. **Daemon, as results arrive** -- :meth:`Action.record` turns one committed
   result into project rows (and renames files from ``Scratch/`` into
   ``Assets/``); when a stage has ended, :meth:`Action.advance` gets the stage's
   results and the stored plan state and returns the next stage, or ``None``
   when the job is done. Multi-cycle schedules (2D classification, ab-initio,
   auto-refine) are written this way, so a restarted daemon continues a plan
   from its stored state instead of starting over.

Payloads, results and plan states must be msgpack/JSON-like (dict, list, str,
int, float, bool, None): they go through :mod:`cistemd.protocol` and SQLite.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cistemd.errors import InvalidInputError

__all__ = [
    "ACTION_MODULES",
    "Action",
    "Parameter",
    "Stage",
    "TaskContext",
    "TaskSpec",
    "get_action",
]

JSONLike = Any


@dataclass(frozen=True, slots=True)
class Parameter:
    """One action parameter, as a form field and a command-line option.

    Attributes
    ----------
    name
        snake_case key in the parameter dict; the CLI option is ``--name-with-dashes``.
    kind
        ``"float"``, ``"int"``, ``"bool"``, ``"str"`` or ``"path"``.
    default
        cisTEM's GUI default (reference §1.4); ``None`` means required.
    help
        One line for forms and ``--help``.
    minimum, maximum
        Inclusive bounds for numbers, if any.
    choices
        Allowed values for ``str`` parameters, if restricted.
    expert
        Shown under "Expert Options" (collapsed) rather than "Program Options".
    """

    name: str
    kind: str
    default: JSONLike
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    expert: bool = False

    def coerce(self, value: JSONLike) -> JSONLike:
        """Return ``value`` converted to this parameter's kind, or raise ``InvalidInputError``."""
        where = f"parameter {self.name!r}"
        try:
            if self.kind == "float":
                if isinstance(value, bool):
                    raise TypeError
                converted: JSONLike = float(value)
            elif self.kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                converted = int(value)
            elif self.kind == "bool":
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in {"yes", "no", "true", "false", "1", "0", "on", "off"}:
                        raise TypeError
                    converted = lowered in {"yes", "true", "1", "on"}
                elif isinstance(value, (bool, int)):
                    converted = bool(value)
                else:
                    raise TypeError
            elif self.kind in {"str", "path"}:
                if not isinstance(value, (str, Path)):
                    raise TypeError
                converted = str(value)
            else:  # pragma: no cover - a programming error in an action module
                raise AssertionError(f"unknown parameter kind {self.kind!r}")
        except (TypeError, ValueError, OverflowError):
            raise InvalidInputError(f"{where}: expected {self.kind}, got {value!r}") from None
        if self.kind in {"float", "int"}:
            if converted != converted:  # NaN
                raise InvalidInputError(f"{where}: expected a number, got NaN")
            if self.minimum is not None and converted < self.minimum:
                raise InvalidInputError(f"{where}: {converted} is below the minimum {self.minimum}")
            if self.maximum is not None and converted > self.maximum:
                raise InvalidInputError(f"{where}: {converted} is above the maximum {self.maximum}")
        if self.choices is not None and converted not in self.choices:
            raise InvalidInputError(
                f"{where}: {converted!r} is not one of {', '.join(self.choices)}"
            )
        return converted


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a stage: a key unique within its job and a JSON-like payload."""

    key: str
    payload: Mapping[str, JSONLike]
    label: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    """A set of independent tasks; ``final`` says no stage follows it."""

    tasks: tuple[TaskSpec, ...]
    final: bool = False
    label: str = ""


@dataclass(slots=True)
class TaskContext:
    """What a task sees while it runs in a worker.

    Attributes
    ----------
    task_id, attempt
        The task and which assignment of it this is.
    scratch_dir
        Where the task writes its output files (under the project's ``Scratch/``);
        :meth:`Action.record` moves them into ``Assets/``.
    threads
        Threads the task may use (scipy.fft ``workers``, numba).
    report_progress
        ``report_progress(fraction, message)``; cheap, may be called often.
    is_cancelled
        Returns ``True`` once the job was cancelled; long loops should check it.
    """

    task_id: str
    attempt: int
    scratch_dir: Path
    threads: int = 1
    report_progress: Callable[[float, str], None] = field(default=lambda fraction, message: None)
    is_cancelled: Callable[[], bool] = field(default=lambda: False)


class Action:
    """Base class of every action; see the module docstring for the three roles."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    parameters: ClassVar[tuple[Parameter, ...]] = ()

    def validate(self, values: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
        """Return the full parameter dict: ``values`` checked, defaults filled in.

        Raises
        ------
        InvalidInputError
            An unknown name, a missing required value or a value of the wrong
            kind or out of bounds; the message names the parameter.
        """
        known = {p.name: p for p in self.parameters}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInputError(
                f"action {self.name!r} has no parameter {unknown[0]!r}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
        result: dict[str, JSONLike] = {}
        for parameter in self.parameters:
            if parameter.name in values and values[parameter.name] is not None:
                result[parameter.name] = parameter.coerce(values[parameter.name])
            elif parameter.default is None:
                raise InvalidInputError(
                    f"action {self.name!r}: parameter {parameter.name!r} is required"
                )
            else:
                result[parameter.name] = parameter.default
        return result

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Return ``(plan_state, first_stage)`` for validated ``parameters``.

        ``project`` is the open :class:`~cistemd.project.Project` the job runs
        in (``None`` when an action is planned without one, e.g. in a unit
        test). Planning may *read* it (which movies a group holds, an image's
        active CTF) to build self-contained task payloads; writes belong in
        :meth:`record`.
        """
        raise NotImplementedError

    def advance(
        self,
        parameters: Mapping[str, JSONLike],
        plan_state: JSONLike,
        results: Mapping[str, JSONLike],
        *,
        project: Any = None,
    ) -> tuple[JSONLike, Stage | None]:
        """Return the next ``(plan_state, stage)``, or a ``None`` stage when done.

        ``results`` maps each ended task's key to its committed result (tasks
        that failed are absent). Single-stage actions mark their stage
        ``final`` and never get here. ``project`` as for :meth:`start`; every
        result of the ended stage has already been through :meth:`record`.
        """
        return plan_state, None

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Run one task in a worker and return its small JSON-like result."""
        raise NotImplementedError

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Record one committed result in ``project`` (daemon side). Default: nothing."""


# name -> module; the module defines exactly one Action subclass named in ``ACTION``.
# One entry per line so independent changes do not collide.
ACTION_MODULES: dict[str, str] = {
    "selftest": "cistemd.actions.selftest",
    "generate_3d": "cistemd.actions.generate_3d",
    "find_particles": "cistemd.actions.find_particles",
    "create_refinement_package": "cistemd.actions.refinement_package",
    "find_ctf": "cistemd.actions.find_ctf",
    "sharpen_map": "cistemd.actions.sharpen_map",
    "align_movies": "cistemd.actions.align_movies",
}


def get_action(name: str) -> Action:
    """Return an instance of the action called ``name`` (importing its module lazily)."""
    module_name = ACTION_MODULES.get(name)
    if module_name is None:
        raise InvalidInputError(
            f"unknown action {name!r}; available: {', '.join(sorted(ACTION_MODULES))}"
        )
    module = importlib.import_module(module_name)
    action = module.ACTION()
    if not isinstance(action, Action):  # pragma: no cover - a programming error
        raise TypeError(f"{module_name}.ACTION is not an Action")
    return action
