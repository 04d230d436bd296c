"""The :class:`Project`: a project directory and the one writer of its database.

The daemon holds its project open for writing; every change is one short
``BEGIN IMMEDIATE`` transaction, so external ``sqlite3`` readers (WAL mode,
``busy_timeout``) can read at any time. A second writer -- in another process
or this one -- is refused at once with :class:`~cistemd.errors.ProjectLockedError`;
``Project.open(path, read_only=True)`` inspects a project without the lock.

Groups follow cisTEM: group 0 of every kind is the implicit "All Movies" /
"All Images" / "All Positions" / "All Volumes" / "All Atomic Coordinates"
group, which holds every asset and is not stored; user groups get ids 1, 2,
3 ... (one more than the largest in use), are listed in ``<KIND>_GROUP_LIST``
with ``LIST_ID = GROUP_ID``, and their members are visible as
``<KIND>_GROUP_<id>`` with ``MEMBER_NUMBER`` 1, 2, 3 ... in insertion order.

Moving a project directory is handled as cisTEM does: on the first open for
writing in the new place, every stored path inside the old directory is
rewritten to the new one (paths outside the project, such as movies left
where they were recorded, are kept). Unlike cisTEM, ``Scratch/`` is not
emptied on open -- a restarted daemon may still adopt work that is there.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cistemd import __version__
from cistemd.errors import InvalidInputError, ProjectError
from cistemd.project import imports
from cistemd.project.layout import ProjectLayout, make_directories
from cistemd.project.lock import MountEntry, WriterLock, network_filesystem_warning
from cistemd.project.schema import (
    ASSET_KINDS,
    LATEST_VERSION,
    AssetKind,
    MigrationError,
    adopt_group_tables,
    create_views_for,
    migrate,
    schema_version,
    sync_dynamic_views,
    table_columns,
)

__all__ = ["BUSY_TIMEOUT_MS", "Project"]

logger = logging.getLogger(__name__)

#: How long a connection waits for another's lock before failing.
BUSY_TIMEOUT_MS = 5000

_CURRENT_WORKFLOW = "Single Particle"


def _find_database(path: Path) -> Path:
    """Return the project database for a directory or ``.db`` path."""
    if path.suffix == ".db" and not path.is_dir():
        if not path.exists():
            raise ProjectError(f"{path}: no such project database")
        return path
    if not path.is_dir():
        raise ProjectError(f"{path}: no such project directory")
    candidates = sorted(p for p in path.glob("*.db") if p.is_file())
    if not candidates:
        raise ProjectError(f"{path}: no project database (*.db) in this directory")
    if len(candidates) == 1:
        return candidates[0]
    preferred = path / f"{path.name}.db"
    if preferred in candidates:
        return preferred
    names = ", ".join(p.name for p in candidates)
    raise ProjectError(f"{path}: several databases ({names}); open the .db file itself")


def _connect(db_path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(
            f"{db_path.absolute().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    else:
        conn = sqlite3.connect(
            db_path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _check_finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ProjectError(f"{name} must be a finite number, got {value!r}", code="invalid_input")
    return number


class Project:
    """An open cistemd project.

    Use :meth:`create` or :meth:`open`, not the constructor; close with
    :meth:`close` or a ``with`` block.

    Attributes
    ----------
    path
        The project directory (absolute).
    name
        The project name (the database is ``<path>/<name>.db``).
    db_path
        The database file.
    layout
        Paths and file names inside the project (:class:`ProjectLayout`).
    read_only
        Whether this handle can write.
    warnings
        Things the user should know about the project as opened (network
        filesystem, relocated paths, old schema in read-only mode ...).
    last_warnings
        Notes from the last import (skipped duplicates ...).
    """

    def __init__(
        self,
        *,
        layout: ProjectLayout,
        conn: sqlite3.Connection,
        lock: WriterLock | None,
        warnings: list[str],
    ) -> None:
        self.layout = layout
        self.path = layout.root
        self.name = layout.name
        self.db_path = layout.db_path
        self.read_only = lock is None
        self.warnings = warnings
        self.last_warnings: list[str] = []
        self._conn: sqlite3.Connection | None = conn
        self._lock = lock
        self._mutex = threading.RLock()
        self._depth = 0

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        mount_table: Iterable[MountEntry] | None = None,
    ) -> Project:
        """Create a project directory and its database, and open it for writing.

        Parameters
        ----------
        path
            The project directory; created if missing. An existing directory
            is used if it holds no project database yet.
        name
            Project name; default the directory's name.
        mount_table
            Mount table for the network-filesystem check (tests); default
            ``/proc/self/mountinfo``.

        Raises
        ------
        ProjectError
            If a project database already exists there, or the directory
            cannot be created.
        """
        root = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        project_name = name if name is not None else root.name
        try:
            layout = ProjectLayout(root, project_name)
        except ValueError as exc:
            raise ProjectError(f"{root}: {exc}") from exc
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root} exists and is not a directory")
        existing = sorted(root.glob("*.db")) if root.is_dir() else []
        if existing:
            raise ProjectError(
                f"{root} already holds a project ({existing[0].name}); open it with "
                "Project.open, or choose an empty directory"
            )
        try:
            make_directories(layout)
        except OSError as exc:
            raise ProjectError(f"cannot create the project directory {root}: {exc}") from exc
        lock = WriterLock(layout.lock_path, project_name)
        lock.acquire()
        if layout.db_path.exists():  # created by another process since the check above
            lock.release()
            raise ProjectError(
                f"{root} already holds a project ({layout.db_path.name}); open it with "
                "Project.open, or choose an empty directory"
            )
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(layout.db_path, read_only=False)
            warnings = cls._set_write_pragmas(conn)
            migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO MASTER_SETTINGS (NUMBER, PROJECT_DIRECTORY, PROJECT_NAME, "
                "CURRENT_VERSION, TOTAL_CPU_HOURS, TOTAL_JOBS_RUN, CISTEM_VERSION_TEXT, "
                "CURRENT_WORKFLOW) VALUES (1, ?, ?, ?, 0, 0, ?, ?)",
                (str(root), project_name, LATEST_VERSION, f"cistemd {__version__}",
                 _CURRENT_WORKFLOW),
            )
            cls._claim_process_lock(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{layout.db_path}{suffix}").unlink(missing_ok=True)
            raise
        warnings += cls._filesystem_warnings(root, mount_table)
        logger.info("created project %s in %s", project_name, root)
        return cls(layout=layout, conn=conn, lock=lock, warnings=warnings)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        mount_table: Iterable[MountEntry] | None = None,
    ) -> Project:
        """Open an existing project.

        Parameters
        ----------
        path
            The project directory or its ``.db`` file.
        read_only
            Open without the writer lock (for inspection while a daemon holds
            the project). Nothing is migrated or relocated then.
        mount_table
            Mount table for the network-filesystem check (tests).

        Raises
        ------
        ProjectLockedError
            Another writer has the project open.
        ProjectError
            No project there, a database from a newer cistemd, or a migration
            that failed.
        """
        db_path = _find_database(Path(os.path.abspath(os.path.expanduser(os.fspath(path)))))
        root = db_path.parent
        layout = ProjectLayout(root, db_path.stem)
        lock = None if read_only else WriterLock(layout.lock_path, layout.name)
        if lock is not None:
            lock.acquire()
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(db_path, read_only=read_only)
            version = cls._check_version(conn, db_path)
            warnings = [] if read_only else cls._set_write_pragmas(conn)
            if read_only:
                if version < LATEST_VERSION:
                    warnings.append(
                        f"{db_path} has schema version {version} (current {LATEST_VERSION}); "
                        "open it for writing once to upgrade it"
                    )
                stored = cls._stored_directory(conn)
                if stored and not cls._same_directory(stored, root):
                    warnings.append(
                        f"the project was moved from {stored} to {root}; stored paths still "
                        "point to the old place until it is opened for writing"
                    )
            else:
                if version < LATEST_VERSION:
                    applied = migrate(conn)
                    logger.info("upgraded %s to schema version(s) %s", db_path, applied)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    warnings += cls._relocate_if_moved(conn, root)
                    adopted = adopt_group_tables(conn)
                    if adopted:
                        warnings.append(
                            "adopted group tables written outside cistemd: " + ", ".join(adopted)
                        )
                    sync_dynamic_views(conn)
                    cls._claim_process_lock(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if lock is not None:
                lock.release()
            if isinstance(exc, MigrationError):
                raise ProjectError(f"{db_path}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, ProjectError):
                raise ProjectError(f"{db_path}: cannot use this database: {exc}") from exc
            raise
        warnings += cls._filesystem_warnings(root, mount_table)
        logger.info("opened project %s (%s)", layout.name, "read-only" if read_only else "writer")
        return cls(layout=layout, conn=conn, lock=lock, warnings=warnings)

    def close(self) -> None:
        """Release the writer lock and close the database (idempotent)."""
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                if not self.read_only:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "DELETE FROM PROCESS_LOCK WHERE ACTIVE_PROCESS = ?", (os.getpid(),)
                    )
                    conn.execute("COMMIT")
                    conn.execute("PRAGMA optimize")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # closing must not fail; the lock is what matters
                logger.warning("closing %s: %s", self.db_path, exc)
            finally:
                conn.close()
                if self._lock is not None:
                    self._lock.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._conn is None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self.closed else ("read-only" if self.read_only else "writer")
        return f"<Project {self.name!r} at {str(self.path)!r} ({mode})>"

    # -- helpers for opening -------------------------------------------------------------------

    @staticmethod
    def _set_write_pragmas(conn: sqlite3.Connection) -> list[str]:
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        conn.execute("PRAGMA synchronous = NORMAL")
        if mode != "wal":
            return [
                f"the database could not be put in WAL mode (journal mode is {mode}); "
                "readers will be blocked while cistemd writes"
            ]
        return []

    @staticmethod
    def _check_version(conn: sqlite3.Connection, db_path: Path) -> int:
        version = schema_version(conn)
        if version == 0:
            tables = {
                row[0].upper()
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "MASTER_SETTINGS" in tables:
                raise ProjectError(
                    f"{db_path} is a cisTEM project database, not a cistemd one; cistemd "
                    "cannot open cisTEM projects directly"
                )
            raise ProjectError(f"{db_path} is not a cistemd project database")
        if version > LATEST_VERSION:
            raise ProjectError(
                f"{db_path} has schema version {version}, newer than this cistemd understands "
                f"({LATEST_VERSION}); upgrade cistemd to open it"
            )
        return version

    @staticmethod
    def _stored_directory(conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT PROJECT_DIRECTORY FROM MASTER_SETTINGS WHERE NUMBER = 1")
        found = row.fetchone()
        return None if found is None or found[0] is None else str(found[0])

    @staticmethod
    def _same_directory(stored: str, root: Path) -> bool:
        if stored.rstrip("/") == str(root).rstrip("/"):
            return True
        try:
            return os.path.samefile(stored, root)
        except OSError:
            return False

    @classmethod
    def _relocate_if_moved(cls, conn: sqlite3.Connection, root: Path) -> list[str]:
        stored = cls._stored_directory(conn)
        if stored is None:
            conn.execute(
                "INSERT OR REPLACE INTO MASTER_SETTINGS (NUMBER, PROJECT_DIRECTORY, "
                "PROJECT_NAME, CURRENT_VERSION, TOTAL_CPU_HOURS, TOTAL_JOBS_RUN, "
                "CISTEM_VERSION_TEXT, CURRENT_WORKFLOW) VALUES (1, ?, ?, ?, 0, 0, ?, ?)",
                (str(root), root.name, LATEST_VERSION, f"cistemd {__version__}",
                 _CURRENT_WORKFLOW),
            )
            return []
        if cls._same_directory(stored, root):
            return []
        old = stored.rstrip("/") or "/"
        changed = _rewrite_path_prefix(conn, old, str(root))
        conn.execute(
            "UPDATE MASTER_SETTINGS SET PROJECT_DIRECTORY = ? WHERE NUMBER = 1", (str(root),)
        )
        message = (
            f"the project was moved from {old} to {root}; {changed} stored path(s) inside it "
            "were updated (paths outside the project are unchanged)"
        )
        logger.warning(message)
        return [message]

    @staticmethod
    def _claim_process_lock(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM PROCESS_LOCK")
        conn.execute(
            "INSERT INTO PROCESS_LOCK (NUMBER, ACTIVE_PROCESS, ACTIVE_HOST) VALUES (1, ?, ?)",
            (os.getpid(), socket.gethostname()),
        )

    @staticmethod
    def _filesystem_warnings(root: Path, mount_table: Iterable[MountEntry] | None) -> list[str]:
        warning = network_filesystem_warning(root, mount_table)
        if warning is None:
            return []
        logger.warning(warning)
        return [warning]

    # -- transactions and queries --------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection (for reads; write through :meth:`transaction`)."""
        if self._conn is None:
            raise ProjectError(f"project {self.name} is closed")
        return self._conn

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the database."""
        return schema_version(self.connection)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` write transaction; nested uses join the outer one.

        Everything done inside is committed together, or rolled back if an
        exception escapes.

        Raises
        ------
        ProjectError
            The project is read-only or closed.
        """
        if self.read_only:
            raise ProjectError(
                f"project {self.name} is open read-only; open it for writing to change it"
            )
        with self._mutex:
            conn = self.connection
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
            finally:
                self._depth = 0

    def query(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """Run a read query; rows as dicts keyed by lower-case column name."""
        with self._mutex:
            cursor = self.connection.execute(sql, parameters)
            names = [d[0].lower() for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _scalar(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        row = self.connection.execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    def insert_row(self, table: str, values: Mapping[str, Any]) -> int:
        """Insert one row into one of cisTEM's tables and return its id.

        Column names are checked against the table. When the table is the
        parent of per-id tables (``MOVIE_ALIGNMENT_LIST``, ``REFINEMENT_LIST``,
        ``CLASSIFICATION_LIST`` ...), their views are created in the same
        transaction.
        """
        with self.transaction() as conn:
            rowid = self._insert(conn, table, values)
            create_views_for(conn, table.upper(), rowid)
            return rowid

    def insert_rows(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert many rows (same columns) into a table; return how many.

        Use for the normalised per-id tables (``REFINEMENT_RESULTS``,
        ``CLASSIFICATION_RESULTS``, ``MOVIE_ALIGNMENT_SHIFTS`` ...) and for
        static tables whose rows need no views.
        """
        rows = list(rows)
        if not rows:
            return 0
        columns = list(rows[0])
        self._check_columns(table, columns)
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        with self.transaction() as conn:
            conn.executemany(sql, [tuple(row[c] for c in columns) for row in rows])
        return len(rows)

    def _check_columns(self, table: str, columns: Iterable[str]) -> None:
        known = {c.upper() for c in table_columns(self.connection, table)}
        if not known:
            raise ProjectError(f"no table {table!r} in the project database")
        unknown = [c for c in columns if c.upper() not in known]
        if unknown:
            raise ProjectError(f"table {table} has no column(s) {', '.join(unknown)}")

    def _insert(self, conn: sqlite3.Connection, table: str, values: Mapping[str, Any]) -> int:
        columns = list(values)
        self._check_columns(table, columns)
        cursor = conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})",
            [values[c] for c in columns],
        )
        return int(cursor.lastrowid or 0)

    def sync_views(self) -> tuple[list[str], list[str]]:
        """Create/drop per-id views to match their parent rows (see :func:`sync_dynamic_views`)."""
        with self.transaction() as conn:
            return sync_dynamic_views(conn)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` and ``foreign_key_check``; empty when all is well."""
        with self._mutex:
            problems = [
                str(row[0])
                for row in self.connection.execute("PRAGMA integrity_check")
                if row[0] != "ok"
            ]
            problems += [
                f"broken foreign key: {tuple(row)}"
                for row in self.connection.execute("PRAGMA foreign_key_check")
            ]
            return problems

    def _existing_filenames(self, table: str) -> set[str]:
        return {row[0] for row in self.connection.execute(f"SELECT FILENAME FROM {table}")}

    # -- imports -------------------------------------------------------------------------------

    def import_movies(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        voltage_kv: float,
        spherical_aberration_mm: float,
        pixel_size_angstroms: float,
        exposure_per_frame: float,
        gain_filename: str | os.PathLike[str] | None = None,
        dark_filename: str | os.PathLike[str] | None = None,
        desired_pixel_size_angstroms: float | None = None,
        correct_mag_distortion: bool = False,
        mag_distortion_angle: float = 0.0,
        mag_distortion_major_scale: float = 1.0,
        mag_distortion_minor_scale: float = 1.0,
        protein_is_white: bool = False,
        eer_super_res_factor: int = 1,
        eer_frames_per_image: int = 0,
    ) -> list[int]:
        """Import movies (referenced in place); return their ``MOVIE_ASSET_ID``s.

        Parameters are those of cisTEM's import dialog; see
        :class:`~cistemd.project.imports.MovieImportParameters` for units and
        checks. ``desired_pixel_size_angstroms`` sets ``OUTPUT_BINNING_FACTOR
        = desired / pixel_size`` (Fourier cropping during alignment). Any kV
        above 0 is accepted; the exposure filter knows 100, 200 and 300 kV.
        Files already in the project are skipped with a note in
        :attr:`last_warnings`. The values are remembered in
        ``MOVIE_IMPORT_DEFAULTS``. Either every movie is imported or none.
        """
        parameters = imports.MovieImportParameters(
            voltage_kv=voltage_kv,
            spherical_aberration_mm=spherical_aberration_mm,
            pixel_size_angstroms=pixel_size_angstroms,
            exposure_per_frame=exposure_per_frame,
            gain_filename=None if gain_filename is None else os.fspath(gain_filename),
            dark_filename=None if dark_filename is None else os.fspath(dark_filename),
            desired_pixel_size_angstroms=desired_pixel_size_angstroms,
            correct_mag_distortion=correct_mag_distortion,
            mag_distortion_angle=mag_distortion_angle,
            mag_distortion_major_scale=mag_distortion_major_scale,
            mag_distortion_minor_scale=mag_distortion_minor_scale,
            protein_is_white=protein_is_white,
            eer_super_res_factor=eer_super_res_factor,
            eer_frames_per_image=eer_frames_per_image,
        )
        self._require_writable()
        prepared = imports.prepare_movies(
            paths, parameters, self._existing_filenames("MOVIE_ASSETS")
        )
        with self.transaction() as conn:
            ids = [self._insert(conn, "MOVIE_ASSETS", row) for row in prepared.rows]
            conn.execute(
                "INSERT OR REPLACE INTO MOVIE_IMPORT_DEFAULTS VALUES "
                "(1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    float(voltage_kv), float(spherical_aberration_mm),
                    float(pixel_size_angstroms), float(exposure_per_frame),
                    int(gain_filename is not None),
                    imports.absolute_path(gain_filename) if gain_filename else "",
                    int(dark_filename is not None),
                    imports.absolute_path(dark_filename) if dark_filename else "",
                    int(desired_pixel_size_angstroms is not None),
                    float(desired_pixel_size_angstroms or pixel_size_angstroms),
                    int(bool(correct_mag_distortion)), float(mag_distortion_angle),
                    float(mag_distortion_major_scale), float(mag_distortion_minor_scale),
                    int(bool(protein_is_white)), int(eer_super_res_factor),
                    int(eer_frames_per_image),
                ),
            )
        self._note(prepared.warnings)
        return ids

    def import_images(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        voltage_kv: float,
        spherical_aberration_mm: float,
        pixel_size_angstroms: float,
        protein_is_white: bool = False,
    ) -> list[int]:
        """Import micrographs (single 2-D MRC or TIFF images, referenced in place).

        Returns the new ``IMAGE_ASSET_ID``s; duplicates are skipped with a note
        in :attr:`last_warnings`. Either every image is imported or none.
        """
        parameters = imports.ImageImportParameters(
            voltage_kv=voltage_kv,
            spherical_aberration_mm=spherical_aberration_mm,
            pixel_size_angstroms=pixel_size_angstroms,
            protein_is_white=protein_is_white,
        )
        self._require_writable()
        prepared = imports.prepare_images(
            paths, parameters, self._existing_filenames("IMAGE_ASSETS")
        )
        with self.transaction() as conn:
            ids = [self._insert(conn, "IMAGE_ASSETS", row) for row in prepared.rows]
            conn.execute(
                "INSERT OR REPLACE INTO IMAGE_IMPORT_DEFAULTS VALUES (1, ?, ?, ?, ?)",
                (float(voltage_kv), float(spherical_aberration_mm), float(pixel_size_angstroms),
                 int(bool(protein_is_white))),
            )
        self._note(prepared.warnings)
        return ids

    def import_volumes(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        pixel_size_angstroms: float | None = None,
    ) -> list[int]:
        """Import 3-D maps (MRC, referenced in place); ``None`` pixel size = from the header."""
        self._require_writable()
        prepared = imports.prepare_volumes(
            paths, pixel_size_angstroms, self._existing_filenames("VOLUME_ASSETS")
        )
        with self.transaction() as conn:
            ids = [self._insert(conn, "VOLUME_ASSETS", row) for row in prepared.rows]
        self._note(prepared.warnings)
        return ids

    def import_particle_positions(self, path: str | os.PathLike[str]) -> int:
        """Import particle positions from a text file (reference §5.4); return the count.

        Each entry names an image by ``IMAGE_ASSET_ID`` or by file name (full
        path, or a base name that matches exactly one image asset) and gives
        x, y in Å. Every image must already be in the project; otherwise
        nothing is imported.
        """
        from cistemd.io import positions as positions_io

        self._require_writable()
        source = imports.absolute_path(path)
        if not os.path.isfile(source):
            raise ProjectError(
                f"{source}: the particle-position file does not exist; check the path",
                code="invalid_input",
            )
        try:
            entries, read_warnings = positions_io.read_with_warnings(source)
        except InvalidInputError as exc:
            raise ProjectError(
                f"{exc} (importing particle positions)", code="invalid_input"
            ) from exc
        resolver = self._image_resolver()
        rows: list[tuple[int, float, float]] = []
        unresolved: dict[str, str] = {}
        for entry in entries:
            image_id, problem = resolver(entry.image)
            if image_id is None:
                unresolved.setdefault(str(entry.image), problem)
                continue
            rows.append((image_id, float(entry.x_angstroms), float(entry.y_angstroms)))
        if unresolved:
            first = next(iter(unresolved.items()))
            raise ProjectError(
                f"{source}: {len(unresolved)} image reference(s) do not match an image asset, "
                f"e.g. {first[0]!r} ({first[1]}); import those images first or fix the file "
                "-- nothing was imported",
                code="invalid_input",
            )
        warnings = read_warnings + self._positions_outside(rows)
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO PARTICLE_POSITION_ASSETS (PARENT_IMAGE_ASSET_ID, PICKING_ID, "
                "PICK_JOB_ID, X_POSITION, Y_POSITION, PEAK_HEIGHT, TEMPLATE_ASSET_ID, "
                "TEMPLATE_PSI, TEMPLATE_THETA, TEMPLATE_PHI) "
                "VALUES (?, -1, -1, ?, ?, 0.0, -1, 0.0, 0.0, 0.0)",
                rows,
            )
        self._note(warnings)
        return len(rows)

    def _image_resolver(self) -> Any:
        by_id: dict[int, str] = {}
        by_path: dict[str, int] = {}
        by_base: dict[str, list[int]] = {}
        for image_id, filename, name in self.connection.execute(
            "SELECT IMAGE_ASSET_ID, FILENAME, NAME FROM IMAGE_ASSETS"
        ):
            by_id[int(image_id)] = filename
            by_path[filename] = int(image_id)
            base = os.path.basename(filename)
            for key in {base, str(name)}:
                by_base.setdefault(key, []).append(int(image_id))

        def resolve(reference: int | str) -> tuple[int | None, str]:
            if isinstance(reference, int) or (isinstance(reference, str) and reference.isdigit()):
                image_id = int(reference)
                if image_id in by_id:
                    return image_id, ""
                return None, f"no image asset with id {image_id}"
            text = str(reference)
            if text in by_path:
                return by_path[text], ""
            absolute = imports.absolute_path(text)
            if absolute in by_path:
                return by_path[absolute], ""
            matches = sorted(set(by_base.get(os.path.basename(text), [])))
            if len(matches) == 1:
                return matches[0], ""
            if len(matches) > 1:
                return None, f"ambiguous: matches image assets {matches}; give the full path"
            return None, "no image asset with that file name"

        return resolve

    def _positions_outside(self, rows: Sequence[tuple[int, float, float]]) -> list[str]:
        sizes = {
            int(i): (x * p, y * p)
            for i, x, y, p in self.connection.execute(
                "SELECT IMAGE_ASSET_ID, X_SIZE, Y_SIZE, PIXEL_SIZE FROM IMAGE_ASSETS"
            )
        }
        outside = sum(
            1
            for image_id, x, y in rows
            if not (0 <= x <= sizes[image_id][0] and 0 <= y <= sizes[image_id][1])
        )
        if outside:
            return [f"{outside} particle position(s) lie outside their image (positions are in Å)"]
        return []

    def add_particle_positions(
        self,
        image_asset_id: int,
        x_angstroms: Sequence[float],
        y_angstroms: Sequence[float],
        *,
        peak_heights: Sequence[float] | None = None,
        picking_id: int | None = None,
        pick_job_id: int | None = None,
    ) -> list[int]:
        """Record particle positions (Å from the image origin) on one image; return their ids."""
        xs = [float(v) for v in x_angstroms]
        ys = [float(v) for v in y_angstroms]
        peaks = [0.0] * len(xs) if peak_heights is None else [float(v) for v in peak_heights]
        if not len(xs) == len(ys) == len(peaks):
            raise ProjectError(
                f"x ({len(xs)}), y ({len(ys)}) and peak heights ({len(peaks)}) differ in length",
                code="invalid_input",
            )
        with self.transaction() as conn:
            self._require_asset("image", image_asset_id)
            ids = []
            for x, y, peak in zip(xs, ys, peaks, strict=True):
                cursor = conn.execute(
                    "INSERT INTO PARTICLE_POSITION_ASSETS (PARENT_IMAGE_ASSET_ID, PICKING_ID, "
                    "PICK_JOB_ID, X_POSITION, Y_POSITION, PEAK_HEIGHT, TEMPLATE_ASSET_ID, "
                    "TEMPLATE_PSI, TEMPLATE_THETA, TEMPLATE_PHI) "
                    "VALUES (?, ?, ?, ?, ?, ?, -1, 0.0, 0.0, 0.0)",
                    (
                        int(image_asset_id),
                        -1 if picking_id is None else int(picking_id),
                        -1 if pick_job_id is None else int(pick_job_id),
                        _check_finite("x", x), _check_finite("y", y), _check_finite("peak", peak),
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))
            return ids

    def import_refinement_package(
        self,
        *,
        stack_path: str | os.PathLike[str],
        parameters_path: str | os.PathLike[str],
        name: str | None = None,
        pixel_size_angstroms: float | None = None,
        symmetry: str = "C1",
        molecular_weight_kda: float = imports.CISTEM_IMPORT_DEFAULTS["molecular_weight_kda"],
        largest_dimension_angstroms: float = imports.CISTEM_IMPORT_DEFAULTS[
            "largest_dimension_angstroms"
        ],
        amplitude_contrast: float | None = None,
        spherical_aberration_mm: float | None = None,
        voltage_kv: float | None = None,
        protein_is_white: bool = False,
        parameters_format: str | None = None,
    ) -> int:
        """Import a particle stack with its parameters as a refinement package.

        See :func:`~cistemd.project.imports.prepare_refinement_package` for the
        accepted files and how missing values are filled (cisTEM's wizard
        defaults: 300 kV, 2.7 mm, amplitude contrast 0.07, 400 kDa, 150 Å).
        Creates the ``REFINEMENT_PACKAGE_ASSETS`` row, its contained particles
        (linked to an image asset where the micrograph name matches one), and
        refinement "Imported Parameters" with the imported poses as class 1.
        Nothing is written if anything is wrong.

        Returns
        -------
        int
            The new ``REFINEMENT_PACKAGE_ASSET_ID``.
        """
        self._require_writable()
        next_package = int(
            self._scalar("SELECT COALESCE(MAX(REFINEMENT_PACKAGE_ASSET_ID), 0) + 1 "
                         "FROM REFINEMENT_PACKAGE_ASSETS")
        )
        prepared = imports.prepare_refinement_package(
            stack_path=stack_path,
            parameters_path=parameters_path,
            name=name,
            package_number=next_package,
            pixel_size_angstroms=pixel_size_angstroms,
            symmetry=symmetry,
            molecular_weight_kda=molecular_weight_kda,
            largest_dimension_angstroms=largest_dimension_angstroms,
            amplitude_contrast=amplitude_contrast,
            spherical_aberration_mm=spherical_aberration_mm,
            voltage_kv=voltage_kv,
            protein_is_white=protein_is_white,
            parameters_format=parameters_format,
        )
        resolver = self._image_resolver()
        image_pixel_sizes = {
            int(i): float(p)
            for i, p in self.connection.execute(
                "SELECT IMAGE_ASSET_ID, PIXEL_SIZE FROM IMAGE_ASSETS"
            )
        }
        linked = 0
        for particle, micrograph, xy in zip(
            prepared.particles, prepared.micrograph_names, prepared.coordinates_pixels,
            strict=True,
        ):
            if not micrograph:
                continue
            image_id, _ = resolver(micrograph)
            if image_id is None:
                continue
            particle["PARENT_IMAGE_ASSET_ID"] = image_id
            linked += 1
            if xy is not None:
                particle["X_POSITION"] = xy[0] * image_pixel_sizes[image_id]
                particle["Y_POSITION"] = xy[1] * image_pixel_sizes[image_id]
        with self.transaction() as conn:
            package_id = self._insert(conn, "REFINEMENT_PACKAGE_ASSETS", prepared.package)
            refinement = dict(prepared.refinement)
            refinement["REFINEMENT_PACKAGE_ASSET_ID"] = package_id
            refinement["DATETIME_OF_RUN"] = int(time.time())
            refinement_id = self._insert(conn, "REFINEMENT_LIST", refinement)
            conn.execute(
                "UPDATE REFINEMENT_PACKAGE_ASSETS SET LAST_REFINEMENT_ID = ? "
                "WHERE REFINEMENT_PACKAGE_ASSET_ID = ?",
                (refinement_id, package_id),
            )
            self._insert_many(conn, "REFINEMENT_PACKAGE_PARTICLES", prepared.particles,
                              {"REFINEMENT_PACKAGE_ASSET_ID": package_id})
            self._insert_many(conn, "REFINEMENT_RESULTS", prepared.results,
                              {"REFINEMENT_ID": refinement_id, "CLASS_NUMBER": 1})
            conn.execute(
                "INSERT INTO REFINEMENT_PACKAGE_REFERENCES (REFINEMENT_PACKAGE_ASSET_ID, "
                "CLASS_NUMBER, VOLUME_ASSET_ID) VALUES (?, 1, -1)",
                (package_id,),
            )
            conn.execute(
                "INSERT INTO REFINEMENT_PACKAGE_REFINEMENTS (REFINEMENT_PACKAGE_ASSET_ID, "
                "REFINEMENT_NUMBER, REFINEMENT_ID) VALUES (?, 1, ?)",
                (package_id, refinement_id),
            )
            conn.execute(
                "INSERT INTO REFINEMENT_CLASS_DETAILS (REFINEMENT_ID, CLASS_NUMBER, "
                "REFERENCE_VOLUME_ASSET_ID, AVERAGE_OCCUPANCY, ESTIMATED_RESOLUTION, "
                "RECONSTRUCTED_VOLUME_ASSET_ID, RECONSTRUCTION_ID, MASK_ASSET_ID) "
                "VALUES (?, 1, -1, 100.0, 0.0, -1, -1, -1)",
                (refinement_id,),
            )
            create_views_for(conn, "REFINEMENT_PACKAGE_ASSETS", package_id)
            create_views_for(conn, "REFINEMENT_LIST", refinement_id)
        warnings = list(prepared.warnings)
        if linked:
            warnings.append(f"{linked} particle(s) linked to image assets by micrograph name")
        self._note(warnings)
        return package_id

    @staticmethod
    def _insert_many(
        conn: sqlite3.Connection,
        table: str,
        rows: Sequence[Mapping[str, Any]],
        fixed: Mapping[str, Any],
    ) -> None:
        if not rows:
            return
        columns = list(fixed) + list(rows[0])
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        head = tuple(fixed.values())
        conn.executemany(sql, [head + tuple(row.values()) for row in rows])

    # -- records that actions add ----------------------------------------------------------

    def add_image(
        self,
        filename: str | os.PathLike[str],
        *,
        pixel_size_angstroms: float,
        voltage_kv: float,
        spherical_aberration_mm: float,
        parent_movie_id: int = -1,
        alignment_id: int = -1,
        protein_is_white: bool = False,
        name: str | None = None,
        x_size: int | None = None,
        y_size: int | None = None,
    ) -> int:
        """Record an image (e.g. an aligned sum) and return its ``IMAGE_ASSET_ID``.

        If ``parent_movie_id`` already has an image, that asset is updated in
        place (new file, alignment, size), keeping its id, its groups and its
        particle positions -- re-aligning a movie replaces its sum, as in
        cisTEM. Sizes default to the file's header.
        """
        path = imports.absolute_path(filename)
        if x_size is None or y_size is None:
            nx, ny, _ = imports.image_dimensions(path)
            x_size, y_size = nx, ny
        values: dict[str, Any] = {
            "NAME": name or Path(path).stem,
            "FILENAME": path,
            "POSITION_IN_STACK": 1,
            "PARENT_MOVIE_ID": int(parent_movie_id),
            "ALIGNMENT_ID": int(alignment_id),
            "X_SIZE": int(x_size),
            "Y_SIZE": int(y_size),
            "PIXEL_SIZE": float(pixel_size_angstroms),
            "VOLTAGE": float(voltage_kv),
            "SPHERICAL_ABERRATION": float(spherical_aberration_mm),
            "PROTEIN_IS_WHITE": int(bool(protein_is_white)),
        }
        for key in ("PIXEL_SIZE", "VOLTAGE"):
            if not values[key] > 0:
                raise ProjectError(f"{key} must be > 0, got {values[key]!r}", code="invalid_input")
        with self.transaction() as conn:
            existing = None
            if parent_movie_id != -1:
                self._require_asset("movie", parent_movie_id)
                existing = self._scalar(
                    "SELECT IMAGE_ASSET_ID FROM IMAGE_ASSETS WHERE PARENT_MOVIE_ID = ? "
                    "ORDER BY IMAGE_ASSET_ID LIMIT 1",
                    (int(parent_movie_id),),
                )
            if existing is not None:
                assignments = ", ".join(f"{c} = ?" for c in values)
                conn.execute(
                    f"UPDATE IMAGE_ASSETS SET {assignments} WHERE IMAGE_ASSET_ID = ?",
                    [*values.values(), int(existing)],
                )
                return int(existing)
            return self._insert(conn, "IMAGE_ASSETS", {**values, "CTF_ESTIMATION_ID": -1})

    def add_movie_alignment(
        self,
        movie_asset_id: int,
        *,
        output_file: str | os.PathLike[str],
        x_shifts_angstroms: Sequence[float] = (),
        y_shifts_angstroms: Sequence[float] = (),
        job_id: int = -1,
        parameters: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a movie alignment and its per-frame shifts (Å); return ``ALIGNMENT_ID``.

        ``parameters`` fills the other ``MOVIE_ALIGNMENT_LIST`` columns
        (``EXPOSURE_PER_FRAME``, ``BFACTOR`` ...); voltage and pixel size
        default to the movie's. The shifts are visible as
        ``MOVIE_ALIGNMENT_PARAMETERS_<id>`` (frames numbered from 1).
        """
        if len(x_shifts_angstroms) != len(y_shifts_angstroms):
            raise ProjectError("x and y shifts differ in length", code="invalid_input")
        with self.transaction() as conn:
            movie = conn.execute(
                "SELECT VOLTAGE, PIXEL_SIZE, DOSE_PER_FRAME, OUTPUT_BINNING_FACTOR "
                "FROM MOVIE_ASSETS WHERE MOVIE_ASSET_ID = ?",
                (int(movie_asset_id),),
            ).fetchone()
            if movie is None:
                raise ProjectError(f"no movie asset with id {movie_asset_id}")
            values: dict[str, Any] = {
                "DATETIME_OF_RUN": int(time.time()),
                "ALIGNMENT_JOB_ID": int(job_id),
                "MOVIE_ASSET_ID": int(movie_asset_id),
                "OUTPUT_FILE": imports.absolute_path(output_file),
                "VOLTAGE": movie[0],
                "PIXEL_SIZE": movie[1],
                "EXPOSURE_PER_FRAME": movie[2],
                "FINAL_PIXEL_SIZE": float(movie[1]) * float(movie[3] or 1.0),
            }
            values.update({k.upper(): v for k, v in (parameters or {}).items()})
            alignment_id = self._insert(conn, "MOVIE_ALIGNMENT_LIST", values)
            conn.executemany(
                "INSERT INTO MOVIE_ALIGNMENT_SHIFTS (ALIGNMENT_ID, FRAME_NUMBER, X_SHIFT, "
                "Y_SHIFT) VALUES (?, ?, ?, ?)",
                [
                    (alignment_id, frame, float(x), float(y))
                    for frame, (x, y) in enumerate(
                        zip(x_shifts_angstroms, y_shifts_angstroms, strict=True), start=1
                    )
                ],
            )
            create_views_for(conn, "MOVIE_ALIGNMENT_LIST", alignment_id)
            return alignment_id

    def add_ctf_estimate(
        self,
        image_asset_id: int,
        *,
        defocus1_angstroms: float,
        defocus2_angstroms: float,
        defocus_angle_degrees: float,
        additional_phase_shift_degrees: float = 0.0,
        score: float = 0.0,
        detected_ring_resolution_angstroms: float = 0.0,
        detected_alias_resolution_angstroms: float = 0.0,
        output_diagnostic_file: str | os.PathLike[str] | None = None,
        job_id: int = -1,
        parameters: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a CTF estimate of an image and make it the image's current one.

        Defocus in Å (positive = underfocus), angle in degrees; the phase shift
        is given in degrees and stored in radians in
        ``ADDITIONAL_PHASE_SHIFT``, as cisTEM stores CTFFIND's output.
        ``parameters`` fills other ``ESTIMATED_CTF_PARAMETERS`` columns (the
        search settings); voltage, Cs and pixel size default to the image's.
        Sets ``IMAGE_ASSETS.CTF_ESTIMATION_ID``.

        Returns
        -------
        int
            The new ``CTF_ESTIMATION_ID``.
        """
        with self.transaction() as conn:
            image = conn.execute(
                "SELECT VOLTAGE, SPHERICAL_ABERRATION, PIXEL_SIZE FROM IMAGE_ASSETS "
                "WHERE IMAGE_ASSET_ID = ?",
                (int(image_asset_id),),
            ).fetchone()
            if image is None:
                raise ProjectError(f"no image asset with id {image_asset_id}")
            values: dict[str, Any] = {
                "CTF_ESTIMATION_JOB_ID": int(job_id),
                "DATETIME_OF_RUN": int(time.time()),
                "IMAGE_ASSET_ID": int(image_asset_id),
                "ESTIMATED_ON_MOVIE_FRAMES": 0,
                "VOLTAGE": image[0],
                "SPHERICAL_ABERRATION": image[1],
                "PIXEL_SIZE": image[2],
                "DEFOCUS1": _check_finite("defocus1", defocus1_angstroms),
                "DEFOCUS2": _check_finite("defocus2", defocus2_angstroms),
                "DEFOCUS_ANGLE": _check_finite("defocus angle", defocus_angle_degrees),
                "ADDITIONAL_PHASE_SHIFT": math.radians(
                    _check_finite("phase shift", additional_phase_shift_degrees)
                ),
                "SCORE": float(score),
                "DETECTED_RING_RESOLUTION": float(detected_ring_resolution_angstroms),
                "DETECTED_ALIAS_RESOLUTION": float(detected_alias_resolution_angstroms),
                "OUTPUT_DIAGNOSTIC_FILE": (
                    imports.absolute_path(output_diagnostic_file) if output_diagnostic_file else ""
                ),
            }
            values.update({k.upper(): v for k, v in (parameters or {}).items()})
            estimation_id = self._insert(conn, "ESTIMATED_CTF_PARAMETERS", values)
            conn.execute(
                "UPDATE IMAGE_ASSETS SET CTF_ESTIMATION_ID = ? WHERE IMAGE_ASSET_ID = ?",
                (estimation_id, int(image_asset_id)),
            )
            return estimation_id

    def previous_alignment_count(self, movie_asset_id: int) -> int:
        """Count the alignments recorded for a movie (the ``<n>`` of aligned-sum names)."""
        return int(self._scalar(
            "SELECT COUNT(*) FROM MOVIE_ALIGNMENT_LIST WHERE MOVIE_ASSET_ID = ?",
            (int(movie_asset_id),),
        ))

    def previous_ctf_estimation_count(self, image_asset_id: int) -> int:
        """Count the CTF estimates recorded for an image (the ``<n>`` of ``_CTF_<n>``)."""
        return int(self._scalar(
            "SELECT COUNT(*) FROM ESTIMATED_CTF_PARAMETERS WHERE IMAGE_ASSET_ID = ?",
            (int(image_asset_id),),
        ))

    def previous_picking_count(self, image_asset_id: int) -> int:
        """Count the pickings recorded for an image (the ``<n>`` of ``_COOS_<n>``)."""
        return int(self._scalar(
            "SELECT COUNT(*) FROM PARTICLE_PICKING_LIST WHERE PARENT_IMAGE_ASSET_ID = ?",
            (int(image_asset_id),),
        ))

    # -- deleting assets -----------------------------------------------------------------------

    def delete_assets(self, kind: str, asset_ids: Iterable[int]) -> int:
        """Remove assets from the project (files are not touched); return how many.

        Group memberships go with them; removing an image also removes its
        particle positions (as in cisTEM). Removing a refinement package
        removes its refinements, classifications and ab-initio runs.
        """
        table, key = self._asset_table(kind)
        ids = [int(i) for i in asset_ids]
        with self.transaction() as conn:
            count = 0
            for asset_id in ids:
                count += conn.execute(
                    f"DELETE FROM {table} WHERE {key} = ?", (asset_id,)
                ).rowcount
            sync_dynamic_views(conn)
            return count

    def _asset_table(self, kind: str) -> tuple[str, str]:
        if kind == "refinement_package":
            return "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID"
        spec = self._kind(kind)
        return spec.asset_table, spec.asset_id

    # -- groups --------------------------------------------------------------------------------

    @staticmethod
    def _kind(kind: str) -> AssetKind:
        try:
            return ASSET_KINDS[kind]
        except KeyError:
            raise ProjectError(
                f"unknown asset kind {kind!r}; use one of {', '.join(ASSET_KINDS)}",
                code="invalid_input",
            ) from None

    def _require_writable(self) -> None:
        if self.read_only:
            raise ProjectError(
                f"project {self.name} is open read-only; open it for writing to change it"
            )
        if self._conn is None:
            raise ProjectError(f"project {self.name} is closed")

    def _require_asset(self, kind: str, asset_id: int) -> None:
        table, key = self._asset_table(kind)
        if self._scalar(f"SELECT 1 FROM {table} WHERE {key} = ?", (int(asset_id),)) is None:
            raise ProjectError(f"no {kind.replace('_', ' ')} asset with id {asset_id}")

    def _require_group(self, spec: AssetKind, group_id: int, action: str) -> None:
        if int(group_id) == 0:
            raise ProjectError(
                f'"{spec.all_group_name}" (group 0) holds every {spec.kind.replace("_", " ")} '
                f"and cannot be {action}"
            )
        found = self._scalar(
            f"SELECT 1 FROM {spec.group_list} WHERE GROUP_ID = ?", (int(group_id),)
        )
        if found is None:
            raise ProjectError(f"no {spec.kind.replace('_', ' ')} group with id {group_id}")

    def create_group(self, kind: str, name: str) -> int:
        """Create an empty group and return its id (1, 2, 3 ...)."""
        spec = self._kind(kind)
        if not name.strip():
            raise ProjectError("a group needs a name", code="invalid_input")
        with self.transaction() as conn:
            group_id = int(
                self._scalar(f"SELECT COALESCE(MAX(GROUP_ID), 0) + 1 FROM {spec.group_list}")
            )
            conn.execute(
                f"INSERT INTO {spec.group_list} (GROUP_ID, GROUP_NAME, LIST_ID) VALUES (?, ?, ?)",
                (group_id, name, group_id),
            )
            create_views_for(conn, spec.group_list, group_id)
            return group_id

    def rename_group(self, kind: str, group_id: int, name: str) -> None:
        """Rename a group (not group 0)."""
        spec = self._kind(kind)
        if not name.strip():
            raise ProjectError("a group needs a name", code="invalid_input")
        with self.transaction() as conn:
            self._require_group(spec, group_id, "renamed")
            conn.execute(
                f"UPDATE {spec.group_list} SET GROUP_NAME = ? WHERE GROUP_ID = ?",
                (name, int(group_id)),
            )

    def delete_group(self, kind: str, group_id: int) -> None:
        """Delete a group (its assets stay in the project)."""
        spec = self._kind(kind)
        with self.transaction() as conn:
            self._require_group(spec, group_id, "deleted")
            conn.execute(f"DELETE FROM {spec.group_list} WHERE GROUP_ID = ?", (int(group_id),))
            conn.execute(f"DROP VIEW IF EXISTS {spec.view_prefix}{int(group_id)}")

    def add_to_group(self, kind: str, group_id: int, asset_ids: Iterable[int]) -> int:
        """Append assets to a group (members already there are skipped); return how many."""
        spec = self._kind(kind)
        ids = [int(i) for i in asset_ids]
        with self.transaction() as conn:
            self._require_group(spec, group_id, "changed")
            known = {
                row[0]
                for row in conn.execute(f"SELECT {spec.asset_id} FROM {spec.asset_table}")
            }
            missing = sorted(set(ids) - known)
            if missing:
                raise ProjectError(
                    f"no {spec.kind.replace('_', ' ')} asset(s) with id {missing}; nothing added",
                    code="invalid_input",
                )
            present = {
                row[0]
                for row in conn.execute(
                    f"SELECT {spec.asset_id} FROM {spec.members_table} WHERE GROUP_ID = ?",
                    (int(group_id),),
                )
            }
            number = int(self._scalar(
                f"SELECT COALESCE(MAX(MEMBER_NUMBER), 0) FROM {spec.members_table} "
                "WHERE GROUP_ID = ?",
                (int(group_id),),
            ))
            rows = []
            for asset_id in dict.fromkeys(ids):
                if asset_id in present:
                    continue
                number += 1
                rows.append((int(group_id), number, asset_id))
            conn.executemany(
                f"INSERT INTO {spec.members_table} (GROUP_ID, MEMBER_NUMBER, {spec.asset_id}) "
                "VALUES (?, ?, ?)",
                rows,
            )
            return len(rows)

    def remove_from_group(self, kind: str, group_id: int, asset_ids: Iterable[int]) -> int:
        """Remove assets from a group (not from the project); return how many were members."""
        spec = self._kind(kind)
        ids = [int(i) for i in asset_ids]
        with self.transaction() as conn:
            self._require_group(spec, group_id, "changed")
            removed = 0
            for asset_id in ids:
                removed += conn.execute(
                    f"DELETE FROM {spec.members_table} WHERE GROUP_ID = ? AND {spec.asset_id} = ?",
                    (int(group_id), asset_id),
                ).rowcount
            return removed

    def list_groups(self, kind: str) -> list[dict[str, Any]]:
        """List the groups of one kind, group 0 ("All ...") first.

        Each entry has ``group_id``, ``name``, ``count`` and ``implicit`` (true
        for group 0, which is not stored).
        """
        spec = self._kind(kind)
        total = int(self._scalar(f"SELECT COUNT(*) FROM {spec.asset_table}"))
        groups: list[dict[str, Any]] = [
            {"group_id": 0, "name": spec.all_group_name, "count": total, "implicit": True}
        ]
        for group_id, name, count in self.connection.execute(
            f"SELECT l.GROUP_ID, l.GROUP_NAME, COUNT(m.MEMBER_NUMBER) FROM {spec.group_list} l "
            f"LEFT JOIN {spec.members_table} m ON m.GROUP_ID = l.GROUP_ID "
            "GROUP BY l.GROUP_ID ORDER BY l.GROUP_ID"
        ):
            groups.append(
                {"group_id": int(group_id), "name": name, "count": int(count), "implicit": False}
            )
        return groups

    def group_members(self, kind: str, group_id: int) -> list[int]:
        """Asset ids in a group, in member order (group 0: every asset by id)."""
        spec = self._kind(kind)
        if int(group_id) == 0:
            sql = f"SELECT {spec.asset_id} FROM {spec.asset_table} ORDER BY {spec.asset_id}"
            return [int(r[0]) for r in self.connection.execute(sql)]
        if self._scalar(
            f"SELECT 1 FROM {spec.group_list} WHERE GROUP_ID = ?", (int(group_id),)
        ) is None:
            raise ProjectError(f"no {spec.kind.replace('_', ' ')} group with id {group_id}")
        return [
            int(r[0])
            for r in self.connection.execute(
                f"SELECT {spec.asset_id} FROM {spec.members_table} WHERE GROUP_ID = ? "
                "ORDER BY MEMBER_NUMBER",
                (int(group_id),),
            )
        ]

    def image_group_from_movie_group(self, movie_group_id: int, name: str) -> int:
        """Create an image group of the images whose parent movie is in a movie group.

        Images come in the movie group's order; group 0 means every movie.
        Returns the new image group's id (the group may be empty if no movie
        has been aligned yet).
        """
        with self.transaction():
            movies = self.group_members("movie", movie_group_id)
            order = {movie_id: i for i, movie_id in enumerate(movies)}
            images = [
                (order[int(parent)], int(image_id))
                for image_id, parent in self.connection.execute(
                    "SELECT IMAGE_ASSET_ID, PARENT_MOVIE_ID FROM IMAGE_ASSETS "
                    "ORDER BY IMAGE_ASSET_ID"
                )
                if int(parent) in order
            ]
            group_id = self.create_group("image", name)
            self.add_to_group("image", group_id, [image_id for _, image_id in sorted(images)])
            return group_id

    # -- listings ------------------------------------------------------------------------------

    def movies(self) -> list[dict[str, Any]]:
        """Every movie asset (``MOVIE_ASSETS`` columns, lower-case keys)."""
        return self.query("SELECT * FROM MOVIE_ASSETS ORDER BY MOVIE_ASSET_ID")

    def images(self) -> list[dict[str, Any]]:
        """Every image asset, with its current CTF estimate's defocus (``NULL`` if none)."""
        return self.query(
            "SELECT i.*, c.DEFOCUS1, c.DEFOCUS2, c.DEFOCUS_ANGLE, c.ADDITIONAL_PHASE_SHIFT, "
            "c.SCORE AS CTF_SCORE, c.DETECTED_RING_RESOLUTION FROM IMAGE_ASSETS i "
            "LEFT JOIN ESTIMATED_CTF_PARAMETERS c ON c.CTF_ESTIMATION_ID = i.CTF_ESTIMATION_ID "
            "ORDER BY i.IMAGE_ASSET_ID"
        )

    def particle_positions(self, image_asset_id: int | None = None) -> list[dict[str, Any]]:
        """Particle positions (Å), all or those of one image."""
        if image_asset_id is None:
            return self.query(
                "SELECT * FROM PARTICLE_POSITION_ASSETS ORDER BY PARTICLE_POSITION_ASSET_ID"
            )
        return self.query(
            "SELECT * FROM PARTICLE_POSITION_ASSETS WHERE PARENT_IMAGE_ASSET_ID = ? "
            "ORDER BY PARTICLE_POSITION_ASSET_ID",
            (int(image_asset_id),),
        )

    def volumes(self) -> list[dict[str, Any]]:
        """Every volume asset."""
        return self.query("SELECT * FROM VOLUME_ASSETS ORDER BY VOLUME_ASSET_ID")

    def refinement_packages(self) -> list[dict[str, Any]]:
        """Every refinement package, with its particle count."""
        return self.query(
            "SELECT r.*, (SELECT COUNT(*) FROM REFINEMENT_PACKAGE_PARTICLES p "
            "WHERE p.REFINEMENT_PACKAGE_ASSET_ID = r.REFINEMENT_PACKAGE_ASSET_ID) "
            "AS NUMBER_OF_PARTICLES FROM REFINEMENT_PACKAGE_ASSETS r "
            "ORDER BY r.REFINEMENT_PACKAGE_ASSET_ID"
        )

    def refinements(self, refinement_package_id: int | None = None) -> list[dict[str, Any]]:
        """Refinements, all or those of one package."""
        if refinement_package_id is None:
            return self.query("SELECT * FROM REFINEMENT_LIST ORDER BY REFINEMENT_ID")
        return self.query(
            "SELECT * FROM REFINEMENT_LIST WHERE REFINEMENT_PACKAGE_ASSET_ID = ? "
            "ORDER BY REFINEMENT_ID",
            (int(refinement_package_id),),
        )

    def ctf_estimates(self, image_asset_id: int | None = None) -> list[dict[str, Any]]:
        """CTF estimates (``ADDITIONAL_PHASE_SHIFT`` in radians), all or one image's."""
        if image_asset_id is None:
            return self.query(
                "SELECT * FROM ESTIMATED_CTF_PARAMETERS ORDER BY CTF_ESTIMATION_ID"
            )
        return self.query(
            "SELECT * FROM ESTIMATED_CTF_PARAMETERS WHERE IMAGE_ASSET_ID = ? "
            "ORDER BY CTF_ESTIMATION_ID",
            (int(image_asset_id),),
        )

    def summary(self) -> dict[str, Any]:
        """Count everything in the project, for ``cistem project info``."""
        counts = {
            "movies": "MOVIE_ASSETS",
            "images": "IMAGE_ASSETS",
            "particle_positions": "PARTICLE_POSITION_ASSETS",
            "volumes": "VOLUME_ASSETS",
            "atomic_coordinates": "ATOMIC_COORDINATES_ASSETS",
            "refinement_packages": "REFINEMENT_PACKAGE_ASSETS",
            "refinements": "REFINEMENT_LIST",
            "classifications": "CLASSIFICATION_LIST",
            "ab_initio_runs": "STARTUP_LIST",
            "movie_alignments": "MOVIE_ALIGNMENT_LIST",
            "ctf_estimations": "ESTIMATED_CTF_PARAMETERS",
            "particle_pickings": "PARTICLE_PICKING_LIST",
        }
        with self._mutex:
            result: dict[str, Any] = {
                "name": self.name,
                "path": str(self.path),
                "db_path": str(self.db_path),
                "schema_version": self.schema_version,
                "read_only": self.read_only,
                "images_with_ctf": int(self._scalar(
                    "SELECT COUNT(*) FROM IMAGE_ASSETS WHERE CTF_ESTIMATION_ID IS NOT -1"
                )),
            }
            for key, table in counts.items():
                result[key] = int(self._scalar(f"SELECT COUNT(*) FROM {table}"))
            result["groups"] = {
                kind: int(self._scalar(f"SELECT COUNT(*) FROM {spec.group_list}"))
                for kind, spec in ASSET_KINDS.items()
            }
            master = self.connection.execute(
                "SELECT TOTAL_CPU_HOURS, TOTAL_JOBS_RUN FROM MASTER_SETTINGS WHERE NUMBER = 1"
            ).fetchone()
            result["total_cpu_hours"] = float(master[0] or 0) if master else 0.0
            result["total_jobs_run"] = int(master[1] or 0) if master else 0
            result["warnings"] = list(self.warnings)
            return result

    # -- misc ----------------------------------------------------------------------------------

    def _note(self, warnings: list[str]) -> None:
        self.last_warnings = list(warnings)
        for warning in warnings:
            logger.warning("%s: %s", self.name, warning)


def _rewrite_path_prefix(conn: sqlite3.Connection, old: str, new: str) -> int:
    """Replace the directory prefix ``old`` by ``new`` in every TEXT column; return rows changed."""
    changed = 0
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    prefix = old + "/"
    for table in tables:
        for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
            if str(column[2]).upper() != "TEXT":
                continue
            name = column[1]
            cursor = conn.execute(
                f'UPDATE "{table}" SET "{name}" = ? || substr("{name}", ?) '
                f'WHERE "{name}" = ? OR substr("{name}", 1, ?) = ?',
                (new, len(old) + 1, old, len(prefix), prefix),
            )
            changed += max(cursor.rowcount, 0)
    return changed

