"""The project: a directory laid out as cisTEM's, and its SQLite database.

* :class:`Project` -- create/open/close a project; imports, groups, records;
* :class:`ProjectLayout` -- paths and cisTEM's file names inside a project;
* :mod:`cistemd.project.schema` -- tables, per-id views, migrations;
* :mod:`cistemd.project.lock` -- single-writer lock, network-filesystem check;
* :mod:`cistemd.project.imports` -- reading and checking what is imported.

Importing this package loads no numeric or file-format library; readers are
imported when an import runs.
"""

from cistemd.project.layout import ProjectLayout
from cistemd.project.lock import MountEntry
from cistemd.project.project import Project
from cistemd.project.schema import ASSET_KINDS, LATEST_VERSION

__all__ = ["ASSET_KINDS", "LATEST_VERSION", "MountEntry", "Project", "ProjectLayout"]
