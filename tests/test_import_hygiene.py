"""Layering rules, checked by importing modules in a fresh interpreter.

* kernels never pull in sockets, databases or the UI (zmq, sqlite3, textual);
* nothing under ``cistemd`` pulls in textual (the daemon is headless);
* ``cistem --help`` builds its parser without numpy or any file-format library,
  so that start-up stays fast for users who run programs once per file.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import cistemd
import cistemd.kernels


def _modules(package) -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
    )


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


def _top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


KERNEL_MODULES = _modules(cistemd.kernels)
CISTEMD_MODULES = [m for m in _modules(cistemd) if not m.startswith("cistemd.cli.commands.")]


def test_there_are_kernel_modules_to_check():
    assert len(KERNEL_MODULES) >= 3


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernels_import_no_sockets_db_or_ui(module):
    loaded = _top_level(_loaded_after(f"import {module}"))
    forbidden = {"zmq", "sqlite3", "_sqlite3", "textual", "paramiko", "msgpack"} & loaded
    assert not forbidden, f"{module} imports {sorted(forbidden)}"


def test_cistemd_never_imports_textual():
    statement = "\n".join(f"import {m}" for m in CISTEMD_MODULES)
    loaded = _top_level(_loaded_after(statement))
    assert "textual" not in loaded


def test_cli_help_is_light():
    loaded = _top_level(
        _loaded_after("from cistemd.cli.main import build_parser\nbuild_parser().format_help()")
    )
    heavy = {"numpy", "scipy", "numba", "mrcfile", "tifffile", "pandas", "starfile", "gemmi"}
    assert not heavy & loaded, f"cistem --help imports {sorted(heavy & loaded)}"


def test_io_package_import_is_light():
    loaded = _top_level(_loaded_after("import cistemd.io"))
    assert not {"mrcfile", "tifffile", "pandas", "starfile", "gemmi", "numba"} & loaded
