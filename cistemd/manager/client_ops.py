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
    "edit_positions",
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


# -- actions, pictures and result queries (the TUI's Actions and Results panels) -----------
# Everything below only reads the project; the daemon stays its only writer.

_PAGE_OBJECTS: Final = 30_000  # msgpack objects per reply page; the frame limit is 65,536


def list_actions() -> dict[str, Any]:
    """Return the ``actions_reply`` content: every registered action and its parameters.

    Returns
    -------
    dict
        ``{actions: [{name, title, parameters: [{name, kind, default, help,
        minimum, maximum, choices, expert}]}], problems: [str]}``; an action whose
        module cannot be imported is left out and named in ``problems``.
    """
    from cistemd.actions.base import ACTION_MODULES, get_action

    actions: list[dict[str, Any]] = []
    problems: list[str] = []
    for name in sorted(ACTION_MODULES):
        try:
            action = get_action(name)
        except Exception as exc:  # a broken action module must not hide the others
            problems.append(f"action {name!r} is unavailable: {type(exc).__name__}: {exc}"[:4096])
            continue
        parameters = []
        for parameter in action.parameters:
            default = parameter.default
            if not (default is None or isinstance(default, bool | int | float | str)):
                default = str(default)
            if isinstance(default, float) and not math.isfinite(default):
                default = None
            parameters.append(
                {
                    "name": parameter.name,
                    "kind": parameter.kind,
                    "default": default,
                    "help": parameter.help[:4096],
                    "minimum": _plain(parameter.minimum),
                    "maximum": _plain(parameter.maximum),
                    "choices": None if parameter.choices is None else list(parameter.choices),
                    "expert": bool(parameter.expert),
                }
            )
        actions.append(
            {"name": name, "title": (action.title or name)[:256], "parameters": parameters}
        )
    return {"actions": actions, "problems": problems}


def _row_or_fail(
    project: Project, sql: str, parameters: Sequence[Any], what: str
) -> dict[str, Any]:
    rows = project.query(sql, parameters)
    if not rows:
        raise InvalidInputError(f"{what} does not exist in {project.path}")
    return rows[0]


def _inside_project(project: Project, path: str) -> str:
    if not os.path.isabs(path):
        raise InvalidInputError(f"path must be absolute, got {path!r}")
    real = os.path.realpath(path)
    root = os.path.realpath(os.fspath(project.path))
    if os.path.commonpath([real, root]) != root:
        raise InvalidInputError(f"{path}: only files inside the project {root} can be shown")
    return path


def _preview_file(
    project: Project, source: str, asset_id: int, path: str, which: str
) -> tuple[str, str]:
    """Return ``(file, how)``: the file to show and ``"2d"``, ``"movie"`` or ``"volume"``."""
    layout = project.layout
    if source == "file":
        return _inside_project(project, path), ("volume" if which == "volume_orth" else "2d")
    if source == "ctf_estimate":
        row = _row_or_fail(
            project,
            "SELECT OUTPUT_DIAGNOSTIC_FILE FROM ESTIMATED_CTF_PARAMETERS "
            "WHERE CTF_ESTIMATION_ID = ?",
            (asset_id,),
            f"CTF estimate {asset_id}",
        )
        return _existing(row["output_diagnostic_file"], f"CTF estimate {asset_id}"), "2d"
    if source == "volume":
        row = _row_or_fail(
            project,
            "SELECT FILENAME FROM VOLUME_ASSETS WHERE VOLUME_ASSET_ID = ?",
            (asset_id,),
            f"volume {asset_id}",
        )
        filename = str(row["filename"])
        if which == "volume_orth":
            orth = layout.orth_view_path(filename)
            if orth.is_file():
                return str(orth), "2d"
        return _existing(filename, f"volume {asset_id}"), "volume"
    if source == "movie":
        movie = _row_or_fail(
            project,
            "SELECT FILENAME FROM MOVIE_ASSETS WHERE MOVIE_ASSET_ID = ?",
            (asset_id,),
            f"movie {asset_id}",
        )
        images = project.query(
            "SELECT IMAGE_ASSET_ID FROM IMAGE_ASSETS WHERE PARENT_MOVIE_ID = ? "
            "ORDER BY IMAGE_ASSET_ID LIMIT 1",
            (asset_id,),
        )
        if not images:
            if which != "image":
                raise InvalidInputError(
                    f"movie {asset_id} has no aligned sum yet, so no {which}; run Align Movies"
                )
            return _existing(movie["filename"], f"movie {asset_id}"), "movie"
        asset_id = int(images[0]["image_asset_id"])
    image = _row_or_fail(
        project,
        "SELECT FILENAME, CTF_ESTIMATION_ID FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID = ?",
        (asset_id,),
        f"image {asset_id}",
    )
    filename = str(image["filename"])
    name = os.path.basename(filename)
    if which == "spectrum":
        return _existing(
            str(layout.spectra_dir / name), f"the amplitude spectrum of image {asset_id}"
        ), "2d"
    if which == "scaled":
        scaled = layout.scaled_dir / name
        return (str(scaled) if scaled.is_file() else _existing(filename, f"image {asset_id}")), "2d"
    if which == "ctf_diagnostic":
        if int(image["ctf_estimation_id"] or -1) < 1:
            raise InvalidInputError(f"image {asset_id} has no CTF estimate yet; run Find CTF")
        return _preview_file(
            project, "ctf_estimate", int(image["ctf_estimation_id"]), "", "image"
        )
    return _existing(filename, f"image {asset_id}"), "2d"


def _existing(path: Any, what: str) -> str:
    if not path or not os.path.isfile(str(path)):
        raise InvalidInputError(f"{path or '(no file)'}: the file of {what} is missing")
    return str(path)


def _bin_picture(array: Any, max_size: int) -> tuple[Any, float]:
    """Block-average a 2-D array so that neither edge exceeds ``max_size``; flip y up."""
    import numpy as np

    ny, nx = array.shape
    factor = max(1, -(-max(nx, ny) // max_size))
    ny_kept, nx_kept = max(factor, ny - ny % factor), max(factor, nx - nx % factor)
    block = np.zeros((ny_kept, nx_kept), np.float32)
    block[: min(ny, ny_kept), : min(nx, nx_kept)] = array[:ny_kept, :nx_kept]
    binned = block.reshape(ny_kept // factor, factor, nx_kept // factor, factor).mean(axis=(1, 3))
    return binned[::-1], 1.0 / factor


def _to_bytes(picture: Any) -> Any:
    """Map a float picture to uint8 with a robust (0.5-99.5 percentile) stretch."""
    import numpy as np

    values = np.asarray(picture, np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = np.percentile(values[finite], [0.5, 99.5])
    if not high > low:
        low, high = float(values[finite].min()), float(values[finite].max())
    if not high > low:
        return np.full(values.shape, 128, np.uint8)
    scaled = (np.where(finite, values, low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _orthogonal_views(volume: Any, max_size: int) -> tuple[Any, float]:
    """Montage of a volume: central sections (top row) and projections (bottom row).

    Columns: xy (along z), xz (along y), yz (along x); each panel is stretched on
    its own, as the projections' range differs from the sections'.
    """
    import numpy as np

    nz, ny, nx = volume.shape
    panel = max(8, max_size // 3)
    values = np.asarray(volume, np.float32)  # one conversion (none for float32 maps)
    views = [
        values[nz // 2],
        values[:, ny // 2, :],
        values[:, :, nx // 2],
        values.sum(axis=0),
        values.sum(axis=1),
        values.sum(axis=2),
    ]
    binned = []
    scale = 1.0
    for view in views:
        picture, scale = _bin_picture(np.asarray(view, np.float32), panel)
        binned.append(_to_bytes(picture))
    height = max(p.shape[0] for p in binned)
    width = max(p.shape[1] for p in binned)
    montage = np.zeros((2 * height, 3 * width), np.uint8)
    for index, picture in enumerate(binned):
        row, column = divmod(index, 3)
        h, w = picture.shape
        montage[row * height : row * height + h, column * width : column * width + w] = picture
    return montage, scale


def image_preview(
    project: Project,
    source: str,
    *,
    asset_id: int = 0,
    path: str = "",
    which: str = "image",
    max_size: int = 256,
) -> dict[str, Any]:
    """Return the ``image_reply`` content: a small 8-bit picture made from an MRC file.

    Parameters
    ----------
    project
        The open project.
    source
        ``image``, ``movie`` (its aligned sum, else the sum of its first 4
        frames), ``volume``, ``ctf_estimate`` (the diagnostic) or ``file`` (a
        ``path`` inside the project).
    asset_id
        The asset's id (``IMAGE_ASSET_ID`` ...).
    path
        With ``source="file"``: the MRC file.
    which
        ``image``; ``spectrum`` (the amplitude spectrum written by Align Movies),
        ``scaled`` (the small sum), ``ctf_diagnostic`` (of the image's current
        CTF estimate), ``volume_orth`` (central sections over projections, xy | xz
        | yz; the stored orthogonal-views file when there is one).
    max_size
        Largest edge of the picture (≤ 512); the file is block-averaged by an
        integer factor.

    Returns
    -------
    dict
        ``{width, height, pixels, file, original_width, original_height,
        original_depth, pixel_size_angstroms, scale}``: ``pixels`` holds
        ``height`` rows of ``width`` bytes, top row first, with the file's y axis
        pointing up (as cisTEM displays images); ``scale`` is picture pixels per
        file pixel (per panel for a montage).

    Raises
    ------
    InvalidInputError
        No such asset, a missing file (named), or a path outside the project.
    """
    filename, how = preview_source(project, source, asset_id=asset_id, path=path, which=which)
    return render_preview(filename, how, which=which, max_size=max_size)


def preview_source(
    project: Project, source: str, *, asset_id: int = 0, path: str = "", which: str = "image"
) -> tuple[str, str]:
    """Return ``(file, kind)`` that :func:`image_preview` would draw (reads the project).

    Parameters are :func:`image_preview`'s; ``kind`` is ``2d``, ``movie`` or
    ``volume``. The daemon resolves this in its loop and draws in the background
    (:func:`render_preview` reads only the file).
    """
    return _preview_file(project, source, int(asset_id), path, which)


def render_preview(filename: str, how: str, *, which: str = "image",
                   max_size: int = 256) -> dict[str, Any]:
    """Return the ``image_reply`` content for a file found by :func:`preview_source`.

    Parameters
    ----------
    filename, how
        :func:`preview_source`'s answer.
    which, max_size
        As :func:`image_preview`.

    Returns
    -------
    dict
        As :func:`image_preview`.
    """
    import numpy as np

    from cistemd.io import mrc

    max_size = max(16, min(512, int(max_size)))
    pixel_size = 0.0
    if how == "movie":
        from cistemd.io.movie import open_movie

        with open_movie(filename) as movie:
            total: Any = None
            for index, frame in enumerate(movie):
                total = np.asarray(frame, np.float32) if total is None else total + frame
                if index >= 3:
                    break
            depth = int(movie.n_frames)
            pixel_size = float(movie.pixel_size_angstroms or 0.0)
        data = total
    else:
        header = mrc.read_header(filename)
        pixel_size = float(header.voxel_size_angstroms[0])
        depth = int(header.nz)
        data = mrc.read(filename, mmap=None)
    if how == "volume" and data.ndim == 3:
        if which == "volume_orth":
            picture, scale = _orthogonal_views(data, max_size)
        else:
            binned, scale = _bin_picture(np.asarray(data[data.shape[0] // 2], np.float32), max_size)
            picture = _to_bytes(binned)
        ny, nx = data.shape[1:]
    else:
        plane = data if data.ndim == 2 else data[0]
        ny, nx = plane.shape
        binned, scale = _bin_picture(np.asarray(plane, np.float32), max_size)
        picture = _to_bytes(binned)
    picture = np.ascontiguousarray(picture[:max_size, :max_size], np.uint8)
    return {
        "width": int(picture.shape[1]),
        "height": int(picture.shape[0]),
        "pixels": picture.tobytes(),
        "file": filename,
        "original_width": int(nx),
        "original_height": int(ny),
        "original_depth": int(depth),
        "pixel_size_angstroms": max(0.0, pixel_size) if math.isfinite(pixel_size) else 0.0,
        "scale": float(scale),
    }


def _page_objects(rows: Sequence[Any], budget: int = _PAGE_OBJECTS) -> list[Any]:
    """Return the longest prefix of ``rows`` within ``budget`` msgpack objects (≥ one row)."""
    used = 0
    out: list[Any] = []
    for row in rows:
        used += 1 + 2 * (len(row) if isinstance(row, dict) else 1)
        if out and used > budget:
            break
        out.append(row)
    return _page(out)


def _number(parameters: Mapping[str, Any], name: str, default: float | None = None) -> Any:
    value = parameters.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"query parameter {name}: expected a number, got {value!r}")
    return value


_CTF_COLUMNS: Final = {
    "ctf_estimation_id": "c.CTF_ESTIMATION_ID",
    "image_asset_id": "c.IMAGE_ASSET_ID",
    "name": "i.NAME",
    "job_id": "c.CTF_ESTIMATION_JOB_ID",
    "defocus1": "c.DEFOCUS1",
    "defocus2": "c.DEFOCUS2",
    "defocus_angle": "c.DEFOCUS_ANGLE",
    "defocus": "(c.DEFOCUS1 + c.DEFOCUS2) / 2.0",
    "astigmatism": "ABS(c.DEFOCUS1 - c.DEFOCUS2)",
    "phase_shift": "c.ADDITIONAL_PHASE_SHIFT * 57.29577951308232",
    "score": "c.SCORE",
    "fit_resolution": "c.DETECTED_RING_RESOLUTION",
    "alias_resolution": "c.DETECTED_ALIAS_RESOLUTION",
    "iciness": "c.ICINESS",
    "pixel_size": "c.PIXEL_SIZE",
    "diagnostic_file": "c.OUTPUT_DIAGNOSTIC_FILE",
}
"""``ctf_table`` columns: defocus in Å, angles and phase shift in degrees, resolutions in Å."""


def _ctf_table(
    project: Project, parameters: Mapping[str, Any], limit: int, offset: int
) -> dict[str, Any]:
    where = ["1"]
    values: list[Any] = []
    job_id = int(_number(parameters, "job_id", 0))
    if job_id:
        where.append("c.CTF_ESTIMATION_JOB_ID = ?")
        values.append(job_id)
    else:
        where.append("i.CTF_ESTIMATION_ID = c.CTF_ESTIMATION_ID")
    group_id = int(_number(parameters, "image_group", 0))
    if group_id:
        where.append(
            "c.IMAGE_ASSET_ID IN "
            "(SELECT IMAGE_ASSET_ID FROM IMAGE_GROUP_MEMBERS WHERE GROUP_ID = ?)"
        )
        values.append(group_id)
    filters = parameters.get("filters", {}) or {}
    if not isinstance(filters, dict):
        raise InvalidInputError("query parameter filters: expected {column: [min, max]}")
    for column, bounds in filters.items():
        if column not in _CTF_COLUMNS or column in ("name", "diagnostic_file"):
            raise InvalidInputError(
                f"cannot filter CTF estimates on {column!r}; use one of "
                + ", ".join(c for c in _CTF_COLUMNS if c not in ("name", "diagnostic_file"))
            )
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise InvalidInputError(f"filter {column}: expected [min, max] (null for open)")
        for bound, operator in zip(bounds, (">=", "<="), strict=True):
            if bound is not None:
                where.append(f"{_CTF_COLUMNS[column]} {operator} ?")
                values.append(_number({column: bound}, column))
    sort = str(parameters.get("sort", "image_asset_id"))
    if sort not in _CTF_COLUMNS:
        raise InvalidInputError(
            f"cannot sort CTF estimates by {sort!r}; use one of {', '.join(_CTF_COLUMNS)}"
        )
    order = "DESC" if parameters.get("descending") else "ASC"
    base = (
        "FROM ESTIMATED_CTF_PARAMETERS c JOIN IMAGE_ASSETS i "
        f"ON i.IMAGE_ASSET_ID = c.IMAGE_ASSET_ID WHERE {' AND '.join(where)}"
    )
    total = int(project.connection.execute(f"SELECT COUNT(*) {base}", values).fetchone()[0])
    order_by = f"ORDER BY {_CTF_COLUMNS[sort]} {order}, c.CTF_ESTIMATION_ID"
    if parameters.get("ids_only"):
        ids = [
            int(r[0])
            for r in project.connection.execute(
                f"SELECT c.IMAGE_ASSET_ID {base} {order_by} LIMIT ? OFFSET ?",
                [*values, min(limit, 10_000), offset],
            )
        ]
        return {"rows": [], "total": total, "data": {"image_asset_ids": ids}}
    columns = ", ".join(f"{expr} AS {name}" for name, expr in _CTF_COLUMNS.items())
    rows = project.query(f"SELECT {columns} {base} {order_by} LIMIT ? OFFSET ?",
                         [*values, limit, offset])
    plain = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return {"rows": _page_objects(plain), "total": total, "data": {}}


def _read_avrot(path: str) -> dict[str, list[float]]:
    """Read CTFFIND's ``_avrot.txt``: the last 6 numeric lines (one micrograph)."""
    names = (
        "spatial_frequency",
        "rotational_average_no_astigmatism",
        "rotational_average",
        "ctf_fit",
        "cross_correlation",
        "noise_2sigma",
    )
    lines: list[list[float]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                values = [float(word) for word in text.split()]
            except ValueError:
                raise InvalidInputError(
                    f"{path}, line {number}: expected numbers in a CTFFIND _avrot.txt file"
                ) from None
            lines.append(values)
    if len(lines) < 6:
        raise InvalidInputError(f"{path}: expected 6 lines of numbers, found {len(lines)}")
    curves = lines[-6:]
    size = min(len(c) for c in curves)
    step = max(1, -(-size // 2000))  # at most 2,000 points per curve
    return {
        name: [v if math.isfinite(v) else 0.0 for v in curve[:size:step]]
        for name, curve in zip(names, curves, strict=True)
    }


def _ctf_zero_rings(row: Mapping[str, Any], pixel_size: float) -> dict[str, Any]:
    """CTF zeros up to Nyquist: along the mean defocus and at 36 azimuths."""
    from cistemd.kernels.ctf import CTFParams, ctf_zero_frequencies

    def value(column: str, default: float) -> float:
        stored = row.get(column)
        return default if stored is None else float(stored)

    params = CTFParams(
        defocus_1_angstroms=float(row["defocus1"]),
        defocus_2_angstroms=float(row["defocus2"]),
        astigmatism_angle_degrees=value("defocus_angle", 0.0),
        voltage_kv=value("voltage", 300.0),
        spherical_aberration_mm=value("spherical_aberration", 2.7),
        amplitude_contrast=value("amplitude_contrast", 0.07),
        additional_phase_shift_radians=value("additional_phase_shift", 0.0),
    )
    nyquist = 0.5 / pixel_size
    mean = [float(k) for k in ctf_zero_frequencies(params, azimuth_degrees=None,
                                                   max_frequency_per_angstrom=nyquist)][:200]
    rings = []
    for azimuth in range(0, 360, 10):
        zeros = ctf_zero_frequencies(
            params, azimuth_degrees=float(azimuth), max_frequency_per_angstrom=nyquist
        )
        rings.append([float(azimuth), [float(k) for k in zeros[:100]]])
    return {"zeros_mean_defocus": mean, "zeros_by_azimuth": rings}


def _ctf_fit(project: Project, parameters: Mapping[str, Any]) -> dict[str, Any]:
    estimation_id = int(_number(parameters, "ctf_estimation_id", 0))
    if not estimation_id:
        image_id = int(_number(parameters, "image_asset_id", 0))
        image = _row_or_fail(
            project,
            "SELECT CTF_ESTIMATION_ID FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID = ?",
            (image_id,),
            f"image {image_id}",
        )
        estimation_id = int(image["ctf_estimation_id"] or -1)
        if estimation_id < 1:
            raise InvalidInputError(f"image {image_id} has no CTF estimate yet; run Find CTF")
    row = _row_or_fail(
        project,
        "SELECT * FROM ESTIMATED_CTF_PARAMETERS WHERE CTF_ESTIMATION_ID = ?",
        (estimation_id,),
        f"CTF estimate {estimation_id}",
    )
    diagnostic = str(row.get("output_diagnostic_file") or "")
    data: dict[str, Any] = {
        "ctf_estimation_id": estimation_id,
        "image_asset_id": int(row["image_asset_id"]),
        "diagnostic_file": diagnostic,
        "avrot_file": "",
        "note": "",
    }
    pixel_size = float(row.get("pixel_size") or 0.0)
    if diagnostic:
        stem, _ = os.path.splitext(diagnostic)
        avrot = stem + "_avrot.txt"
        data["avrot_file"] = avrot
        if os.path.isfile(avrot):
            data.update(_read_avrot(avrot))
        else:
            data["note"] = f"{avrot}: no 1D fit file (CTFFIND's _avrot.txt) was written"
        if os.path.isfile(diagnostic):
            from cistemd.io import mrc

            header = mrc.read_header(diagnostic)
            data["diagnostic_box"] = int(header.nx)
            if header.voxel_size_angstroms[0] > 0:
                pixel_size = float(header.voxel_size_angstroms[0])
    data["diagnostic_pixel_size_angstroms"] = pixel_size
    if pixel_size > 0 and row.get("defocus1") is not None and row.get("defocus2") is not None:
        data.update(_ctf_zero_rings(row, pixel_size))
    summary = {
        name: _plain(row.get(column.lower()))
        for name, column in (
            ("defocus1", "DEFOCUS1"),
            ("defocus2", "DEFOCUS2"),
            ("defocus_angle", "DEFOCUS_ANGLE"),
            ("score", "SCORE"),
            ("fit_resolution", "DETECTED_RING_RESOLUTION"),
            ("alias_resolution", "DETECTED_ALIAS_RESOLUTION"),
        )
    }
    return {"rows": [summary], "total": 1, "data": data}


def _alignment_row(project: Project, parameters: Mapping[str, Any]) -> dict[str, Any]:
    alignment_id = int(_number(parameters, "alignment_id", 0))
    if not alignment_id:
        image_id = int(_number(parameters, "image_asset_id", 0))
        movie_id = int(_number(parameters, "movie_asset_id", 0))
        if image_id:
            image = _row_or_fail(
                project,
                "SELECT ALIGNMENT_ID FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID = ?",
                (image_id,),
                f"image {image_id}",
            )
            alignment_id = int(image["alignment_id"] or -1)
        elif movie_id:
            rows = project.query(
                "SELECT MAX(ALIGNMENT_ID) AS ID FROM MOVIE_ALIGNMENT_LIST WHERE MOVIE_ASSET_ID = ?",
                (movie_id,),
            )
            alignment_id = int(rows[0]["id"] or -1) if rows else -1
        if alignment_id < 1:
            raise InvalidInputError(
                "give alignment_id, image_asset_id or movie_asset_id of an aligned movie"
            )
    return _row_or_fail(
        project,
        "SELECT * FROM MOVIE_ALIGNMENT_LIST WHERE ALIGNMENT_ID = ?",
        (alignment_id,),
        f"alignment {alignment_id}",
    )


def _alignment_shifts(project: Project, parameters: Mapping[str, Any]) -> dict[str, Any]:
    row = _alignment_row(project, parameters)
    alignment_id = int(row["alignment_id"])
    shifts = [
        {"frame": int(r[0]), "x": float(r[1]), "y": float(r[2])}
        for r in project.connection.execute(
            "SELECT FRAME_NUMBER, X_SHIFT, Y_SHIFT FROM MOVIE_ALIGNMENT_SHIFTS "
            "WHERE ALIGNMENT_ID = ? ORDER BY FRAME_NUMBER",
            (alignment_id,),
        )
    ]
    images = project.query(
        "SELECT IMAGE_ASSET_ID FROM IMAGE_ASSETS WHERE ALIGNMENT_ID = ? LIMIT 1", (alignment_id,)
    )
    data = {
        "alignment_id": alignment_id,
        "movie_asset_id": int(row["movie_asset_id"]),
        "image_asset_id": int(images[0]["image_asset_id"]) if images else 0,
        "job_id": _plain(row.get("alignment_job_id")),
        "output_file": str(row.get("output_file") or ""),
        "pixel_size": _plain(row.get("pixel_size")),
    }
    return {"rows": _page_objects(shifts), "total": len(shifts), "data": data}


def _alignments(
    project: Project, parameters: Mapping[str, Any], limit: int, offset: int
) -> dict[str, Any]:
    job_id = int(_number(parameters, "job_id", 0))
    where, values = ("a.ALIGNMENT_JOB_ID = ?", [job_id]) if job_id else ("1", [])
    total = int(
        project.connection.execute(
            f"SELECT COUNT(*) FROM MOVIE_ALIGNMENT_LIST a WHERE {where}", values
        ).fetchone()[0]
    )
    rows = project.query(
        "SELECT a.ALIGNMENT_ID, a.MOVIE_ASSET_ID, m.NAME, a.ALIGNMENT_JOB_ID AS JOB_ID, "
        "a.OUTPUT_FILE, (SELECT IMAGE_ASSET_ID FROM IMAGE_ASSETS i "
        "WHERE i.ALIGNMENT_ID = a.ALIGNMENT_ID LIMIT 1) AS IMAGE_ASSET_ID "
        "FROM MOVIE_ALIGNMENT_LIST a "
        "LEFT JOIN MOVIE_ASSETS m ON m.MOVIE_ASSET_ID = a.MOVIE_ASSET_ID "
        f"WHERE {where} ORDER BY a.ALIGNMENT_ID LIMIT ? OFFSET ?",
        [*values, limit, offset],
    )
    ids = [int(r["alignment_id"]) for r in rows]
    paths: dict[int, list[tuple[float, float]]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for alignment, x, y in project.connection.execute(
            "SELECT ALIGNMENT_ID, X_SHIFT, Y_SHIFT FROM MOVIE_ALIGNMENT_SHIFTS "
            f"WHERE ALIGNMENT_ID IN ({', '.join('?' for _ in chunk)}) "
            "ORDER BY ALIGNMENT_ID, FRAME_NUMBER",
            chunk,
        ):
            paths[int(alignment)].append((float(x), float(y)))
    out = []
    for row in rows:
        path = paths[int(row["alignment_id"])]
        steps = [math.dist(path[i - 1], path[i]) for i in range(1, len(path))]
        plain = {k: _plain(v) for k, v in row.items()}
        plain["frames"] = len(path)
        plain["total_drift"] = float(sum(steps))
        plain["max_shift"] = max((math.hypot(x, y) for x, y in path), default=0.0)
        out.append(plain)
    return {"rows": _page_objects(out), "total": total, "data": {}}


def _picked_images(
    project: Project, parameters: Mapping[str, Any], limit: int, offset: int
) -> dict[str, Any]:
    job_id = int(_number(parameters, "job_id", 0))
    where, values = ("p.PICK_JOB_ID = ?", [job_id]) if job_id else ("1", [])
    total = int(
        project.connection.execute(
            "SELECT COUNT(DISTINCT p.PARENT_IMAGE_ASSET_ID) FROM PARTICLE_POSITION_ASSETS p "
            f"WHERE {where}",
            values,
        ).fetchone()[0]
    )
    rows = project.query(
        "SELECT p.PARENT_IMAGE_ASSET_ID AS IMAGE_ASSET_ID, i.NAME, COUNT(*) AS PICKS, "
        "MAX(p.PICKING_ID) AS PICKING_ID, MAX(p.PICK_JOB_ID) AS JOB_ID "
        "FROM PARTICLE_POSITION_ASSETS p JOIN IMAGE_ASSETS i "
        f"ON i.IMAGE_ASSET_ID = p.PARENT_IMAGE_ASSET_ID WHERE {where} "
        "GROUP BY p.PARENT_IMAGE_ASSET_ID ORDER BY p.PARENT_IMAGE_ASSET_ID LIMIT ? OFFSET ?",
        [*values, limit, offset],
    )
    plain = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return {"rows": _page_objects(plain), "total": total, "data": {}}


def _picks(
    project: Project, parameters: Mapping[str, Any], limit: int, offset: int
) -> dict[str, Any]:
    image_id = int(_number(parameters, "image_asset_id", 0))
    image = _row_or_fail(
        project,
        "SELECT IMAGE_ASSET_ID, PIXEL_SIZE, X_SIZE, Y_SIZE FROM IMAGE_ASSETS "
        "WHERE IMAGE_ASSET_ID = ?",
        (image_id,),
        f"image {image_id}",
    )
    where, values = "PARENT_IMAGE_ASSET_ID = ?", [image_id]
    job_id = int(_number(parameters, "job_id", 0))
    if job_id:
        where += " AND PICK_JOB_ID = ?"
        values.append(job_id)
    total = int(
        project.connection.execute(
            f"SELECT COUNT(*) FROM PARTICLE_POSITION_ASSETS WHERE {where}", values
        ).fetchone()[0]
    )
    rows = [
        {"particle_position_asset_id": int(r[0]), "x": float(r[1]), "y": float(r[2]),
         "peak_height": _plain(r[3]), "picking_id": int(r[4] if r[4] is not None else -1)}
        for r in project.connection.execute(
            "SELECT PARTICLE_POSITION_ASSET_ID, X_POSITION, Y_POSITION, PEAK_HEIGHT, PICKING_ID "
            f"FROM PARTICLE_POSITION_ASSETS WHERE {where} "
            "ORDER BY PARTICLE_POSITION_ASSET_ID LIMIT ? OFFSET ?",
            [*values, limit, offset],
        )
    ]
    data: dict[str, Any] = {
        "image_asset_id": image_id,
        "pixel_size": _plain(image["pixel_size"]),
        "x_size": int(image["x_size"] or 0),
        "y_size": int(image["y_size"] or 0),
        "characteristic_radius": None,
        "maximum_radius": None,
    }
    picking_ids = {r["picking_id"] for r in rows if r["picking_id"] > 0}
    if picking_ids:
        picking = project.query(
            "SELECT CHARACTERISTIC_RADIUS, MAXIMUM_RADIUS FROM PARTICLE_PICKING_LIST "
            "WHERE PICKING_ID = ?",
            (max(picking_ids),),
        )
        if picking:
            data["characteristic_radius"] = _plain(picking[0]["characteristic_radius"])
            data["maximum_radius"] = _plain(picking[0]["maximum_radius"])
    return {"rows": _page_objects(rows), "total": total, "data": data}


def _fsc(project: Project, parameters: Mapping[str, Any]) -> dict[str, Any]:
    refinement_id = int(_number(parameters, "refinement_id", 0))
    class_number = int(_number(parameters, "class_number", 1))
    volume_id = int(_number(parameters, "volume_asset_id", 0))
    if volume_id and not refinement_id:
        _row_or_fail(
            project,
            "SELECT VOLUME_ASSET_ID FROM VOLUME_ASSETS WHERE VOLUME_ASSET_ID = ?",
            (volume_id,),
            f"volume {volume_id}",
        )
        found = project.query(
            "SELECT REFINEMENT_ID, CLASS_NUMBER FROM RECONSTRUCTION_LIST "
            "WHERE VOLUME_ASSET_ID = ? ORDER BY RECONSTRUCTION_ID DESC LIMIT 1",
            (volume_id,),
        ) or project.query(
            "SELECT REFINEMENT_ID, CLASS_NUMBER FROM REFINEMENT_CLASS_DETAILS "
            "WHERE RECONSTRUCTED_VOLUME_ASSET_ID = ? ORDER BY REFINEMENT_ID DESC LIMIT 1",
            (volume_id,),
        )
        if found:
            refinement_id = int(found[0]["refinement_id"])
            class_number = int(found[0]["class_number"])
    data: dict[str, Any] = {
        "refinement_id": refinement_id,
        "class_number": class_number,
        "volume_asset_id": volume_id,
        "resolution_fsc_0143": None,
        "resolution_fsc_05": None,
    }
    if not refinement_id:
        return {"rows": [], "total": 0, "data": data}
    rows = [
        {
            "shell": int(r[0]),
            "resolution": _plain(r[1]),
            "fsc": _plain(r[2]),
            "part_fsc": _plain(r[3]),
            "part_ssnr": _plain(r[4]),
            "rec_ssnr": _plain(r[5]),
        }
        for r in project.connection.execute(
            "SELECT SHELL, RESOLUTION, FSC, PART_FSC, PART_SSNR, REC_SSNR "
            "FROM REFINEMENT_CLASS_STATISTICS WHERE REFINEMENT_ID = ? AND CLASS_NUMBER = ? "
            "ORDER BY SHELL",
            (refinement_id, class_number),
        )
    ]
    for threshold, key in ((0.143, "resolution_fsc_0143"), (0.5, "resolution_fsc_05")):
        data[key] = _crossing(rows, threshold)
    return {"rows": _page_objects(rows), "total": len(rows), "data": data}


def _crossing(rows: Sequence[Mapping[str, Any]], threshold: float) -> float | None:
    """Resolution (Å) where the FSC first drops below ``threshold``, interpolated in 1/Å."""
    previous: Mapping[str, Any] | None = None
    for row in rows:
        fsc, resolution = row["fsc"], row["resolution"]
        if fsc is None or not resolution:
            continue
        if fsc < threshold:
            if previous is None:
                return float(resolution)
            f0, f1 = 1.0 / previous["resolution"], 1.0 / resolution
            t = (previous["fsc"] - threshold) / (previous["fsc"] - fsc)
            return float(1.0 / (f0 + t * (f1 - f0)))
        previous = row
    return float(previous["resolution"]) if previous is not None else None


def results_query(
    project: Project,
    query: str,
    parameters: Mapping[str, Any],
    *,
    limit: int = 500,
    offset: int = 0,
) -> dict[str, Any]:
    """Answer a ``results_query``; return the ``results_reply`` content.

    Parameters
    ----------
    project
        The open project (only read).
    query
        * ``ctf_table`` -- CTF estimates (columns :data:`_CTF_COLUMNS`): the
          images' current ones, or those of ``job_id``; ``image_group``,
          ``filters`` ``{column: [min, max]}`` (``null`` = open), ``sort``,
          ``descending``; ``ids_only`` returns ``data.image_asset_ids`` instead
          of rows (up to 10,000 per page, for "make a group from the selection").
        * ``ctf_fit`` -- one estimate (``ctf_estimation_id`` or the current one
          of ``image_asset_id``): the 1-D curves of its ``_avrot.txt``
          (``spatial_frequency`` in 1/Å, ``rotational_average``, ``ctf_fit``,
          ...) and the CTF zeros up to Nyquist (``zeros_mean_defocus``,
          ``zeros_by_azimuth`` = ``[[azimuth°, [k 1/Å ...]] ...]``).
        * ``alignments`` -- movie alignments (of ``job_id``) with frames, total
          drift and largest shift (Å).
        * ``alignment_shifts`` -- per-frame shifts (Å) of ``alignment_id``, or of
          the alignment behind ``image_asset_id`` / the latest of ``movie_asset_id``.
        * ``picked_images`` -- images with particle positions (of ``job_id``) and
          their pick counts.
        * ``picks`` -- the positions (Å, origin at the image's first pixel) of
          ``image_asset_id`` (of ``job_id``) and the picking radii.
        * ``fsc`` -- resolution statistics of ``refinement_id`` / ``class_number``
          or of the refinement that made ``volume_asset_id``, with the 0.143 and
          0.5 crossings (Å).
    parameters
        The query's parameters (above).
    limit, offset
        The page of rows.

    Returns
    -------
    dict
        ``{query, rows, total, data}``.

    Raises
    ------
    InvalidInputError
        An unknown parameter value or asset (named).
    """
    limit = max(1, min(10_000, int(limit)))
    offset = max(0, int(offset))
    if query == "ctf_table":
        reply = _ctf_table(project, parameters, limit, offset)
    elif query == "ctf_fit":
        reply = _ctf_fit(project, parameters)
    elif query == "alignments":
        reply = _alignments(project, parameters, limit, offset)
    elif query == "alignment_shifts":
        reply = _alignment_shifts(project, parameters)
    elif query == "picked_images":
        reply = _picked_images(project, parameters, limit, offset)
    elif query == "picks":
        reply = _picks(project, parameters, limit, offset)
    elif query == "fsc":
        reply = _fsc(project, parameters)
    else:
        raise InvalidInputError(f"unknown results query {query!r}")
    return {"query": query, **reply}


def edit_positions(
    project: Project,
    operation: str,
    image_asset_id: int,
    *,
    x_angstroms: Sequence[float] = (),
    y_angstroms: Sequence[float] = (),
    position_ids: Sequence[int] = (),
    radius_angstroms: float = 50.0,
) -> dict[str, Any]:
    """Carry out a ``positions_edit`` request (manual editing of picks).

    Parameters
    ----------
    project
        The open project (the caller holds its write transaction).
    operation
        ``add``: record ``(x, y)`` positions (Å from the first pixel) on the
        image, with the image's latest picking id; ``remove``: delete
        ``position_ids`` of the image and, for each ``(x, y)``, its position
        nearest to it within ``radius_angstroms``.
    image_asset_id
        The image.
    x_angstroms, y_angstroms, position_ids, radius_angstroms
        The operation's arguments.

    Returns
    -------
    dict
        ``{image_asset_id, operation, position_ids, total}``: ids added or
        removed, and the image's number of positions afterwards. The image's
        latest ``PARTICLE_PICKING_LIST`` row gets ``MANUAL_EDIT = 1``.
    """
    if len(x_angstroms) != len(y_angstroms):
        raise InvalidInputError(
            f"x ({len(x_angstroms)}) and y ({len(y_angstroms)}) differ in length"
        )
    conn = project.connection
    if conn.execute(
        "SELECT 1 FROM IMAGE_ASSETS WHERE IMAGE_ASSET_ID = ?", (int(image_asset_id),)
    ).fetchone() is None:
        raise InvalidInputError(f"no image asset with id {image_asset_id}")
    latest = conn.execute(
        "SELECT PICKING_ID FROM PARTICLE_PICKING_LIST WHERE PARENT_IMAGE_ASSET_ID = ? "
        "ORDER BY PICKING_ID DESC LIMIT 1",
        (int(image_asset_id),),
    ).fetchone()
    picking_id = int(latest[0]) if latest else None
    changed: list[int] = []
    if operation == "add":
        if position_ids:
            raise InvalidInputError("add takes x and y, not position_ids")
        changed = project.add_particle_positions(
            int(image_asset_id), list(x_angstroms), list(y_angstroms), picking_id=picking_id
        )
    elif operation == "remove":
        rows = conn.execute(
            "SELECT PARTICLE_POSITION_ASSET_ID, X_POSITION, Y_POSITION FROM "
            "PARTICLE_POSITION_ASSETS WHERE PARENT_IMAGE_ASSET_ID = ?",
            (int(image_asset_id),),
        ).fetchall()
        present = {int(r[0]): (float(r[1]), float(r[2])) for r in rows}
        doomed: list[int] = []
        for pid in position_ids:
            if int(pid) not in present:
                raise InvalidInputError(
                    f"particle position {pid} is not on image {image_asset_id}"
                )
            doomed.append(int(pid))
        for x, y in zip(x_angstroms, y_angstroms, strict=True):
            best, best_d = None, float(radius_angstroms)
            for pid, (px, py) in present.items():
                distance = math.hypot(px - float(x), py - float(y))
                if pid not in doomed and distance <= best_d:
                    best, best_d = pid, distance
            if best is not None:
                doomed.append(best)
        conn.executemany(
            "DELETE FROM PARTICLE_POSITION_ASSETS WHERE PARTICLE_POSITION_ASSET_ID = ?",
            [(pid,) for pid in doomed],
        )
        changed = doomed
    else:
        raise InvalidInputError(f"unknown positions operation {operation!r}; use add or remove")
    if picking_id is not None and changed:
        conn.execute(
            "UPDATE PARTICLE_PICKING_LIST SET MANUAL_EDIT = 1 WHERE PICKING_ID = ?",
            (picking_id,),
        )
    total = conn.execute(
        "SELECT COUNT(*) FROM PARTICLE_POSITION_ASSETS WHERE PARENT_IMAGE_ASSET_ID = ?",
        (int(image_asset_id),),
    ).fetchone()[0]
    return {
        "image_asset_id": int(image_asset_id),
        "operation": operation,
        "position_ids": changed,
        "total": int(total),
    }
