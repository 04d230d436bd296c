r"""What the daemon does for the asset, group and result requests of its clients.

Each function takes an open :class:`~cistemd.project.Project` (or the job
store's connection) and a request's content, does the work through the
Project API, and returns the reply's content. The daemon calls them inside the
project's write transaction and sends the reply after the commit; they never
touch sockets. Errors are :class:`~cistemd.errors.CistemError`\\ s whose
``code`` reaches the client (``invalid_input`` names the file or the option).

Bounds
------
* An import request carries at most 500 paths (the protocol's limit); the
  client splits bigger imports. Reading a movie's header takes ~0.1 ms, so one
  request keeps the daemon from its other clients for well under a second
  (about 50 ms for 500 movies on a local disk; longer on a slow network
  filesystem, where a smaller batch is kinder).
* Listing pages are cut short to keep a reply under :data:`PAGE_BYTES`, so a
  reply never exceeds the frame limit whatever the rows hold.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from cistemd.errors import CistemError, InvalidInputError

if TYPE_CHECKING:
    from cistemd.project import Project

__all__ = [
    "IMPORT_OPTIONS",
    "PAGE_BYTES",
    "edit_groups",
    "import_assets",
    "job_results",
    "job_tasks",
    "list_assets",
    "list_groups",
]

PAGE_BYTES: Final = 512 * 1024
"""Most bytes of rows (as JSON) in one listing reply; the frame limit is 1 MiB."""

_TEXT_MAX: Final = 2000  # characters kept of one text field in task evidence


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(f"option {name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(f"option {name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"option {name}: expected a finite number, got {value!r}")
    return number


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"option {name}: expected an integer, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidInputError(f"option {name}: expected an integer, got {value!r}") from None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise InvalidInputError(f"option {name}: expected yes or no, got {value!r}")


def _path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidInputError(f"option {name}: expected a file path, got {value!r}")
    if not os.path.isabs(value):
        raise InvalidInputError(f"option {name}: the path must be absolute, got {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"option {name}: expected text, got {value!r}")
    return value


_Converter = Callable[[str, Any], Any]

IMPORT_OPTIONS: Final[Mapping[str, Mapping[str, tuple[_Converter, bool]]]] = {
    "movies": {
        "voltage_kv": (_float, True),
        "spherical_aberration_mm": (_float, True),
        "pixel_size_angstroms": (_float, True),
        "exposure_per_frame": (_float, True),
        "gain_filename": (_path, False),
        "dark_filename": (_path, False),
        "desired_pixel_size_angstroms": (_float, False),
        "correct_mag_distortion": (_bool, False),
        "mag_distortion_angle": (_float, False),
        "mag_distortion_major_scale": (_float, False),
        "mag_distortion_minor_scale": (_float, False),
        "protein_is_white": (_bool, False),
        "eer_super_res_factor": (_int, False),
        "eer_frames_per_image": (_int, False),
    },
    "images": {
        "voltage_kv": (_float, True),
        "spherical_aberration_mm": (_float, True),
        "pixel_size_angstroms": (_float, True),
        "protein_is_white": (_bool, False),
    },
    "volumes": {"pixel_size_angstroms": (_float, False)},
    "positions": {},
    "refinement_package": {
        "name": (_text, False),
        "pixel_size_angstroms": (_float, False),
        "symmetry": (_text, False),
        "molecular_weight_kda": (_float, False),
        "largest_dimension_angstroms": (_float, False),
        "amplitude_contrast": (_float, False),
        "spherical_aberration_mm": (_float, False),
        "voltage_kv": (_float, False),
        "protein_is_white": (_bool, False),
        "parameters_format": (_text, False),
    },
}
"""Per import kind: option name -> (converter, required). Names follow the Project API."""


def _options(kind: str, given: Mapping[str, Any]) -> dict[str, Any]:
    allowed = IMPORT_OPTIONS[kind]
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidInputError(
                f"importing {kind}: unknown option {name!r} (the options are: {known})"
            )
        if value is None:
            continue
        convert, _ = allowed[name]
        out[name] = convert(name, value)
    missing = [name for name, (_, required) in allowed.items() if required and name not in out]
    if missing:
        raise InvalidInputError(f"importing {kind}: missing option(s) {', '.join(missing)}")
    return out


def import_assets(
    project: Project, kind: str, paths: Sequence[str], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Import files into ``project``; return the ``assets_imported`` content.

    Parameters
    ----------
    project
        The open project (the caller holds its write transaction).
    kind
        ``movies``, ``images``, ``positions``, ``volumes`` or ``refinement_package``.
    paths
        Absolute paths: the files (``positions``: one text file;
        ``refinement_package``: ``[stack, parameters]``).
    options
        The import dialog's fields (:data:`IMPORT_OPTIONS`).

    Returns
    -------
    dict
        ``{kind, ids, count, warnings}``.

    Raises
    ------
    InvalidInputError
        A file that cannot be read (named), an unknown or missing option.
    """
    for path in paths:
        if not os.path.isabs(path):
            raise InvalidInputError(f"paths must be absolute, got {path!r}")
    values = _options(kind, options)
    ids: list[int] = []
    project.last_warnings = []
    try:
        if kind == "movies":
            ids = project.import_movies(paths, **values)
            count = len(ids)
        elif kind == "images":
            ids = project.import_images(paths, **values)
            count = len(ids)
        elif kind == "volumes":
            ids = project.import_volumes(paths, **values)
            count = len(ids)
        elif kind == "positions":
            if len(paths) != 1:
                raise InvalidInputError(
                    f"importing positions takes one text file, got {len(paths)} paths"
                )
            count = project.import_particle_positions(paths[0])
        else:
            if len(paths) != 2:
                raise InvalidInputError(
                    "importing a refinement package takes [stack, parameters], "
                    f"got {len(paths)} paths"
                )
            ids = [
                project.import_refinement_package(
                    stack_path=paths[0], parameters_path=paths[1], **values
                )
            ]
            count = 1
    except OSError as exc:
        where = exc.filename or (paths[0] if paths else "")
        raise InvalidInputError(f"{where}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CistemError):
            raise
        raise InvalidInputError(f"importing {kind}: {exc}") from None
    warnings = [str(w)[:4096] for w in project.last_warnings][:100]
    return {"kind": kind, "ids": ids, "count": int(count), "warnings": warnings}


def _plain(value: Any) -> Any:
    """Return a DB value as a protocol value (blobs dropped, NaN/inf as None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    return value


def _page(rows: Sequence[Any], budget: int = PAGE_BYTES) -> list[Any]:
    """Return the longest prefix of ``rows`` (at least one) within ``budget`` bytes of JSON."""
    used = 0
    out: list[Any] = []
    for row in rows:
        used += len(json.dumps(row, default=str)) + 16
        if out and used > budget:
            break
        out.append(row)
    return out


_LISTINGS: Final = {
    "movies": ("movie", "MOVIE_ASSETS", "MOVIE_ASSET_ID"),
    "images": ("image", "IMAGE_ASSETS", "IMAGE_ASSET_ID"),
    "positions": ("particle_position", "PARTICLE_POSITION_ASSETS", "PARTICLE_POSITION_ASSET_ID"),
    "volumes": ("volume", "VOLUME_ASSETS", "VOLUME_ASSET_ID"),
    "packages": ("", "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID"),
    "refinements": ("", "REFINEMENT_LIST", "REFINEMENT_ID"),
    "ctf_estimates": ("", "ESTIMATED_CTF_PARAMETERS", "CTF_ESTIMATION_ID"),
}


def list_assets(
    project: Project, kind: str, *, group_id: int = 0, limit: int = 200, offset: int = 0
) -> dict[str, Any]:
    """Return the ``assets_reply`` content: a page of one kind's rows.

    Parameters
    ----------
    project
        The open project.
    kind
        ``movies``, ``images``, ``positions``, ``volumes``, ``packages``,
        ``refinements`` or ``ctf_estimates``.
    group_id
        Only the members of this group (0: all; groupable kinds only).
    limit, offset
        The page.

    Returns
    -------
    dict
        ``{kind, assets, total}``; rows keyed by lower-case column name.
    """
    group_kind, table, id_column = _LISTINGS[kind]
    if group_id and not group_kind:
        raise InvalidInputError(f"{kind} have no groups; leave out --group")
    if group_id:
        members = project.group_members(group_kind, group_id)
        total = len(members)
        chosen = members[offset : offset + limit]
        by_id = {
            int(row[id_column.lower()]): row for row in _select(project, table, id_column, chosen)
        }
        rows = [by_id[i] for i in chosen if i in by_id]
    else:
        total = int(project.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        if kind == "packages":
            rows = project.refinement_packages()[offset : offset + limit]
        else:
            rows = project.query(
                f"SELECT * FROM {table} ORDER BY {id_column} LIMIT ? OFFSET ?", (limit, offset)
            )
    plain = [{key: _plain(value) for key, value in row.items()} for row in rows]
    return {"kind": kind, "assets": _page(plain), "total": total}


def _select(
    project: Project, table: str, id_column: str, ids: Sequence[int]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows += project.query(f"SELECT * FROM {table} WHERE {id_column} IN ({marks})", chunk)
    return rows


def list_groups(
    project: Project, kind: str, *, group_id: int = -1, offset: int = 0, limit: int = 10_000
) -> dict[str, Any]:
    """Return the ``groups_reply`` content for ``groups_list``.

    Parameters
    ----------
    project
        The open project.
    kind
        Group kind (``movie``, ``image``, ``particle_position``, ``volume``,
        ``atomic_coordinates``).
    group_id
        Also return a page of this group's members (-1: none).
    offset, limit
        The members' page.

    Returns
    -------
    dict
        ``{kind, groups, group_id, members, members_total}``.
    """
    groups = project.list_groups(kind)[:10_000]
    reply: dict[str, Any] = {"kind": kind, "groups": groups, "group_id": group_id}
    if group_id >= 0:
        members = project.group_members(kind, group_id)
        reply["members"] = members[offset : offset + min(limit, 10_000)]
        reply["members_total"] = len(members)
    return reply


def edit_groups(
    project: Project,
    kind: str,
    operation: str,
    *,
    group_id: int = 0,
    name: str = "",
    asset_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Carry out a ``groups_edit`` request; return the ``groups_reply`` content.

    Parameters
    ----------
    project
        The open project (the caller holds its write transaction).
    kind
        Group kind.
    operation
        ``create`` (``name``), ``rename`` (``group_id``, ``name``), ``delete``
        (``group_id``), ``add`` / ``remove`` (``group_id``, ``asset_ids``),
        ``from_movie_group`` (``group_id`` of a movie group, ``name``; makes an
        image group of the images aligned from those movies).
    group_id, name, asset_ids
        The operation's arguments.

    Returns
    -------
    dict
        ``{kind, groups, group_id, changed}``: ``group_id`` is the group acted
        on (the new one for create and from_movie_group).
    """
    changed = 0
    if operation == "create":
        group_id = project.create_group(kind, name)
    elif operation == "rename":
        project.rename_group(kind, group_id, name)
    elif operation == "delete":
        project.delete_group(kind, group_id)
    elif operation == "add":
        changed = project.add_to_group(kind, group_id, asset_ids)
    elif operation == "remove":
        changed = project.remove_from_group(kind, group_id, asset_ids)
    else:
        if kind != "movie":
            raise InvalidInputError(
                "from-movie-group makes an image group from a movie group; use kind movie"
            )
        name = name or f"From movie group {group_id}"
        group_id = project.image_group_from_movie_group(group_id, name)
        kind = "image"
        changed = len(project.group_members("image", group_id))
    return {
        "kind": kind,
        "groups": project.list_groups(kind)[:10_000],
        "group_id": group_id,
        "changed": changed,
    }


def _clip_evidence(items: Any) -> list[Any]:
    if not isinstance(items, list):
        return []
    out = []
    for item in items[-16:]:
        if isinstance(item, dict):
            out.append(
                {
                    str(k): (v[-_TEXT_MAX:] if isinstance(v, str) else _plain(v))
                    for k, v in item.items()
                    if v is None or isinstance(v, str | int | float | bool)
                }
            )
    return out


def job_tasks(
    conn: sqlite3.Connection,
    job_id: str,
    *,
    states: Sequence[str] = (),
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """Return the ``job_tasks_reply`` content: a page of a job's tasks.

    Parameters
    ----------
    conn
        The project's connection.
    job_id
        The job.
    states
        Only tasks in these states (default all).
    limit, offset
        The page (in stage and position order).

    Returns
    -------
    dict
        ``{job_id, tasks, total}``.
    """
    where = "t.JOB_ID = ?"
    params: list[Any] = [int(job_id)]
    if states:
        where += f" AND t.STATE IN ({', '.join('?' for _ in states)})"
        params += list(states)
    total = int(
        conn.execute(f"SELECT COUNT(*) FROM CISTEMD_TASKS t WHERE {where}", params).fetchone()[0]
    )
    rows = conn.execute(
        "SELECT t.TASK_ID, t.TASK_KEY, t.STAGE_INDEX, t.LABEL, t.STATE, t.ATTEMPT, t.FAILURES, "
        "COALESCE(t.WORKER_ID, t.LAST_WORKER_ID, ''), COALESCE(w.HOST, ''), t.REASON, "
        "t.EVIDENCE FROM CISTEMD_TASKS t LEFT JOIN CISTEMD_WORKERS w "
        "ON w.WORKER_ID = COALESCE(t.WORKER_ID, t.LAST_WORKER_ID) "
        f"WHERE {where} ORDER BY t.STAGE_INDEX, t.POSITION LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    tasks = [
        {
            "task_id": str(r[0]),
            "key": str(r[1])[:256],
            "stage": int(r[2]),
            "label": str(r[3])[:256],
            "state": str(r[4]),
            "attempt": int(r[5]),
            "failures": int(r[6]),
            "worker_id": str(r[7])[:256],
            "host": str(r[8])[:256],
            "reason": str(r[9])[:4096],
            "evidence": _clip_evidence(json.loads(r[10] or "[]")),
        }
        for r in rows
    ]
    return {"job_id": str(job_id), "tasks": _page(tasks), "total": total}


def job_results(
    conn: sqlite3.Connection, job_id: str, *, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    """Return the ``job_results_reply`` content: a page of a job's recorded results.

    Parameters
    ----------
    conn
        The project's connection.
    job_id
        The job.
    limit, offset
        The page (in stage and position order).

    Returns
    -------
    dict
        ``{job_id, results, total}``.
    """
    total = int(
        conn.execute(
            "SELECT COUNT(*) FROM CISTEMD_RESULTS WHERE JOB_ID = ?", (int(job_id),)
        ).fetchone()[0]
    )
    rows = conn.execute(
        "SELECT r.TASK_ID, t.TASK_KEY, r.ATTEMPT, r.WORKER_ID, r.RESULT, r.OUTPUT_FILES, "
        "r.ELAPSED_S, r.RECORDED_AT FROM CISTEMD_RESULTS r JOIN CISTEMD_TASKS t "
        "ON t.TASK_ID = r.TASK_ID WHERE r.JOB_ID = ? "
        "ORDER BY t.STAGE_INDEX, t.POSITION LIMIT ? OFFSET ?",
        (int(job_id), limit, offset),
    ).fetchall()
    results = []
    for r in rows:
        result = json.loads(r[4])
        files = json.loads(r[5] or "[]")
        results.append(
            {
                "task_id": str(r[0]),
                "key": str(r[1])[:256],
                "attempt": int(r[2]),
                "worker_id": str(r[3])[:256],
                "result": result if isinstance(result, dict) else {"value": result},
                "output_files": [str(f) for f in files if f][:1000],
                "elapsed_s": max(0.0, float(r[6])),
                "recorded_at": str(r[7])[:256],
            }
        )
    return {"job_id": str(job_id), "results": _page(results), "total": total}
