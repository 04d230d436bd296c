"""A small, strict, memory-bounded STAR reader shared by the cisTEM and RELION formats.

It understands what cisTEM and RELION write: ``data_NAME`` blocks holding
``_label value`` pairs and/or a ``loop_`` of ``_label`` lines followed by
rows; ``#`` comments; values quoted with ``'`` or ``"`` when they contain
spaces. A loop ends at the next ``data_``, ``loop_`` or ``_label`` pair, or
at the end of the file; blank lines inside it are ignored.

Only the columns a caller asks for are kept, converted as they are read into
compact arrays (``float64``/``int64``; strings as Python lists), so memory use
is proportional to what is needed, not to the file. Every problem is an
:class:`~cistemd.errors.InvalidInputError` naming the file and line.
"""

from __future__ import annotations

import array
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cistemd.io._guard import MAX_TEXT_ROWS, PathLike, raise_invalid, text_lines

__all__ = ["ColumnKind", "StarBlock", "format_star_value", "read_star", "tokenize"]

ColumnKind = Callable[[str, str], str | None]
"""``kind(block_name, label) -> "float" | "int" | "str" | None`` (``None`` = skip)."""

_MAX_LABELS = 1000
_MAX_BLOCKS = 1000
_QUOTED = re.compile(r"""'(.*?)'(?=\s|$)|"(.*?)"(?=\s|$)|(\S+)""")


def tokenize(line: str) -> list[str]:
    """Split a STAR line into values, honouring ``'...'`` and ``"..."`` quoting."""
    if "'" not in line and '"' not in line:
        return line.split()
    return [
        match.group(1) if match.group(1) is not None
        else match.group(2) if match.group(2) is not None
        else match.group(3)
        for match in _QUOTED.finditer(line)
    ]


def format_star_value(value: str) -> str:
    """Quote a string for a STAR file if it is empty or contains whitespace or quotes."""
    if value and not any(c.isspace() for c in value) and value[0] not in "'\"_#$;":
        return value
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot write a STAR value containing both quote characters: {value!r}")


@dataclass
class StarBlock:
    """One ``data_`` block.

    Attributes
    ----------
    name
        Block name without ``data_`` (``""`` for a bare ``data_``).
    labels
        Loop labels in file order, without the leading underscore.
    columns
        The kept loop columns: label -> ``float64``/``int64`` array or list of str.
    pairs
        ``_label value`` items outside a loop (label without underscore).
    n_rows
        Number of loop rows.
    line_numbers
        1-based file line of each loop row.
    """

    name: str
    labels: list[str] = field(default_factory=list)
    columns: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)
    n_rows: int = 0
    line_numbers: Any = None
    first_line: int = 0


class _LoopBuilder:
    def __init__(self, path: PathLike, block: StarBlock, kind: ColumnKind) -> None:
        self.path = path
        self.block = block
        self.converters: list[tuple[int, str, str, Any]] = []
        for index, label in enumerate(block.labels):
            chosen = kind(block.name, label)
            if chosen is None:
                continue
            store: Any = (
                array.array("d") if chosen == "float" else array.array("q") if chosen == "int"
                else []
            )
            self.converters.append((index, label, chosen, store))
        self.lines = array.array("q")
        self.width = len(block.labels)

    def add(self, tokens: list[str], line_number: int) -> None:
        if len(tokens) != self.width:
            raise_invalid(
                self.path,
                f"line {line_number} has {len(tokens)} columns, expected {self.width} "
                f"(the labels of data_{self.block.name})",
            )
        if len(self.lines) >= MAX_TEXT_ROWS:
            raise_invalid(self.path, f"more than {MAX_TEXT_ROWS} rows; refusing")
        self.lines.append(line_number)
        for index, label, chosen, store in self.converters:
            token = tokens[index]
            if chosen == "str":
                store.append(token)
                continue
            try:
                if chosen == "float":
                    store.append(float(token))
                else:
                    store.append(int(token))
            except ValueError:
                if chosen == "int":
                    try:
                        number = float(token)
                    except ValueError:
                        number = float("nan")
                    if number == number and abs(number) < 2**62 and number == int(number):
                        store.append(int(number))
                        continue
                what = "a number" if chosen == "float" else "an integer"
                raise_invalid(
                    self.path,
                    f"line {line_number}: _{label} is {token[:40]!r}, not {what}",
                )
            except OverflowError:
                raise_invalid(self.path, f"line {line_number}: _{label} {token[:40]!r} "
                                         "is out of range")

    def finish(self) -> None:
        block = self.block
        block.n_rows = len(self.lines)
        block.line_numbers = np.frombuffer(self.lines, dtype=np.int64) if self.lines else (
            np.zeros(0, dtype=np.int64)
        )
        for _, label, chosen, store in self.converters:
            if chosen == "str":
                block.columns[label] = store
                continue
            values = np.frombuffer(store, dtype=np.float64 if chosen == "float" else np.int64)
            values = values.copy() if values.size else np.zeros(0, values.dtype)
            if chosen == "float":
                bad = np.flatnonzero(~np.isfinite(values))
                if bad.size:
                    row = int(bad[0])
                    raise_invalid(
                        self.path,
                        f"line {int(block.line_numbers[row])}: _{label} is {values[row]}, "
                        "not a finite number",
                    )
            block.columns[label] = values


def read_star(path: PathLike, kind: ColumnKind, *, what: str = "STAR file") -> list[StarBlock]:
    """Read the ``data_`` blocks of a STAR file.

    Parameters
    ----------
    path
        The file.
    kind
        Which loop columns to keep and how to convert them (see :data:`ColumnKind`).
    what
        Name of the format for messages.

    Returns
    -------
    list of StarBlock
        In file order.

    Raises
    ------
    InvalidInputError
        For unreadable files and any structural or value error.
    """
    blocks: list[StarBlock] = []
    block: StarBlock | None = None
    loop: _LoopBuilder | None = None
    state = "outside"  # outside | block | labels | rows

    def close_loop() -> None:
        nonlocal loop
        if loop is not None:
            loop.finish()
            loop = None

    for number, line in text_lines(path, what=what):
        stripped = line.lstrip()
        if not stripped or stripped[0] == "#":
            continue
        if stripped.startswith("data_"):
            close_loop()
            if len(blocks) >= _MAX_BLOCKS:
                raise_invalid(path, f"more than {_MAX_BLOCKS} data blocks")
            parts = stripped[5:].split()
            name = parts[0] if parts else ""
            if any(existing.name == name for existing in blocks):
                raise_invalid(path, f"line {number}: data_{name} appears twice")
            block = StarBlock(name=name, first_line=number)
            blocks.append(block)
            state = "block"
            continue
        if block is None:
            raise_invalid(path, f"line {number}: {stripped[:40]!r} before any data_ block; "
                                f"not a {what}")
        if stripped.startswith("loop_"):
            close_loop()
            if block.labels:
                raise_invalid(path, f"line {number}: a second loop_ in data_{block.name}")
            state = "labels"
            continue
        if stripped[0] == ";":
            raise_invalid(path, f"line {number}: multi-line (;) text values are not supported")
        if stripped[0] == "_":
            tokens = tokenize(stripped)
            label = tokens[0][1:]
            if not label:
                raise_invalid(path, f"line {number}: empty label")
            if state == "labels":
                if len(block.labels) >= _MAX_LABELS:
                    raise_invalid(path, f"more than {_MAX_LABELS} labels in one loop")
                if label in block.labels:
                    raise_invalid(path, f"line {number}: label _{label} appears twice")
                block.labels.append(label)
                continue
            close_loop()
            state = "block"
            if len(tokens) < 2:
                raise_invalid(path, f"line {number}: _{label} has no value")
            if len(block.pairs) >= _MAX_LABELS:
                raise_invalid(path, f"more than {_MAX_LABELS} items in data_{block.name}")
            block.pairs[label] = tokens[1]
            continue
        if stripped.startswith(("stop_", "global_")):
            continue
        if state == "labels":
            if not block.labels:
                raise_invalid(path, f"line {number}: loop_ without labels")
            loop = _LoopBuilder(path, block, kind)
            state = "rows"
        if state != "rows" or loop is None:
            raise_invalid(path, f"line {number}: unexpected {stripped[:40]!r} outside a loop")
        loop.add(tokenize(stripped), number)
    if state == "labels" and block is not None:
        loop = _LoopBuilder(path, block, kind)
    close_loop()
    if not blocks:
        raise_invalid(path, f"no data_ block; not a {what}")
    return blocks
