"""Fuzz every reader with mutated files: a correct result or InvalidInputError, fast.

For each kind of file (MRC, LZW TIFF, cisTEM star, .par, RELION star,
particle positions) a valid seed file is mutated 1,000 times, deterministically
(seeded numpy RNG): truncation at random offsets, flipped and overwritten bytes,
absurd header integers (negative, 0, 2^31-1, ...), huge extended headers,
garbage TIFF tags, random text lines, wrong column counts, NaN/inf text and
binary junk. Every mutated file goes through the format's readers and through
``info.describe``; each call must return a result of the right type or raise
``InvalidInputError`` -- nothing else -- within 2 s.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from cistemd.errors import InvalidInputError
from cistemd.io import cistem_star, info, mrc, par, positions, relion_star, tiff
from cistemd.io.movie import open_movie
from cistemd.io.parameters import COLUMNS, ParticleParameters

N_MUTATIONS = 1000
MAX_SECONDS_PER_CALL = 2.0

ABSURD_INTS = [0, -1, -2, 1, 3, 7, 255, 65535, 65536, 2**24, 2**30, 2**31 - 1, -(2**31)]
BAD_TOKENS = ["nan", "NaN", "inf", "-inf", "1e999", "-1e999", "", "abc", "'", '"', "#",
              "data_", "loop_", "_rlnImageName", "_cisTEMAnglePsi", "1@", "@", "C", ";",
              "9" * 400, "0x1F", "1,5", "--1", "\t", "\u00e9", "0@x", "-5@a.mrcs"]


# -- seed files ------------------------------------------------------------------------------------


def _seed_mrc(path: Path) -> None:
    rng = np.random.default_rng(0)
    mrc.write(path, rng.normal(size=(3, 12, 10)).astype(np.float32), voxel_size_angstroms=1.2)


def _seed_tiff(path: Path) -> None:
    rng = np.random.default_rng(1)
    tiff.write(path, rng.poisson(1.5, size=(3, 12, 10)).astype(np.uint8),
               pixel_size_angstroms=1.06)


def _params(n: int) -> ParticleParameters:
    rng = np.random.default_rng(2)
    table = ParticleParameters.with_defaults(n)
    for column in COLUMNS:
        if column.dtype is object:
            table.set(column.name, np.array([f"stack_{i}.mrc" for i in range(n)], dtype=object))
        elif np.dtype(column.dtype).kind == "f":
            table.set(column.name, rng.uniform(0.5, 300, n))
    return table


def _seed_cistem_star(path: Path) -> None:
    cistem_star.write(path, _params(6))


def _seed_par(path: Path) -> None:
    par.write(path, _params(6))


def _seed_relion(path: Path) -> None:
    relion_star.write(path, _params(6), image_names=[f"{i:06d}@s.mrcs" for i in range(1, 7)],
                      image_size=64)


def _seed_positions(path: Path) -> None:
    positions.write(path, [positions.ParticlePosition(i % 3 + 1, 10.5 * i, 7.25 * i)
                           for i in range(6)]
                    + [positions.ParticlePosition("mic_01.mrc", 1.0, 2.0)])


# -- mutations -------------------------------------------------------------------------------------


def _put_int(data: bytearray, offset: int, value: int, rng: np.random.Generator) -> None:
    if offset + 4 > len(data):
        return
    order = "<" if rng.random() < 0.85 else ">"
    data[offset:offset + 4] = struct.pack(order + ("i" if value < 2**31 else "I"), value)


def _binary_mutation(data: bytes, rng: np.random.Generator, hot_offsets: list[int]) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        choice = rng.integers(0, 8)
        if choice == 0 and len(out) > 1:  # truncate
            del out[int(rng.integers(0, len(out))):]
        elif choice == 1:  # flip bits
            for _ in range(int(rng.integers(1, 20))):
                if out:
                    at = int(rng.integers(0, len(out)))
                    out[at] ^= 1 << int(rng.integers(0, 8))
        elif choice == 2:  # overwrite a run with random bytes
            if out:
                at = int(rng.integers(0, len(out)))
                length = int(rng.integers(1, 64))
                out[at:at + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        elif choice in (3, 4):  # absurd integer in a field that matters
            at = int(rng.choice(hot_offsets)) if hot_offsets and rng.random() < 0.8 else int(
                rng.integers(0, max(1, len(out) - 4)))
            value = int(rng.choice(ABSURD_INTS)) if rng.random() < 0.8 else int(
                rng.integers(-(2**31), 2**31))
            _put_int(out, at, value, rng)
        elif choice == 5:  # insert junk
            at = int(rng.integers(0, len(out) + 1))
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        elif choice == 6:  # duplicate a chunk (repeated IFDs, repeated sections)
            if len(out) > 2:
                start = int(rng.integers(0, len(out) - 1))
                chunk = out[start:start + int(rng.integers(1, 300))]
                out[int(rng.integers(0, len(out))):0] = chunk
        else:  # append garbage
            out += rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
    return bytes(out)


def _text_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    if rng.random() < 0.1:  # some binary mutations on text files too
        return _binary_mutation(data, rng, [])
    lines = data.decode("utf-8").split("\n")
    for _ in range(int(rng.integers(1, 4))):
        choice = rng.integers(0, 9)
        index = int(rng.integers(0, len(lines))) if lines else 0
        if not lines:
            lines = [""]
        if choice == 0:  # delete a line
            del lines[index]
        elif choice == 1:  # duplicate a line
            lines.insert(index, lines[index])
        elif choice == 2:  # replace a token
            tokens = lines[index].split(" ")
            tokens[int(rng.integers(0, len(tokens)))] = str(rng.choice(BAD_TOKENS))
            lines[index] = " ".join(tokens)
        elif choice == 3:  # drop a token: wrong column count
            tokens = lines[index].split()
            if tokens:
                del tokens[int(rng.integers(0, len(tokens)))]
            lines[index] = " ".join(tokens)
        elif choice == 4:  # add a token
            lines[index] += " " + str(rng.choice(BAD_TOKENS))
        elif choice == 5:  # random text line
            words = rng.choice([*BAD_TOKENS, "1", "2.5", "-3", "x.mrc"], int(rng.integers(1, 20)))
            lines.insert(index, " ".join(str(w) for w in words))
        elif choice == 6:  # truncate text
            joined = "\n".join(lines)
            lines = joined[: int(rng.integers(0, len(joined) + 1))].split("\n")
        elif choice == 7:  # huge number
            tokens = lines[index].split()
            if tokens:
                tokens[int(rng.integers(0, len(tokens)))] = str(
                    rng.choice(["1e308", "-1e308", str(2**70), str(-(2**63)), "9" * 30]))
            lines[index] = " ".join(tokens)
        else:  # swap two lines
            other = int(rng.integers(0, len(lines)))
            lines[index], lines[other] = lines[other], lines[index]
    return "\n".join(lines).encode("utf-8", errors="surrogatepass")


def _mrc_hot_offsets(path: Path) -> list[int]:
    # nx ny nz mode ... mx my mz cella ... ispg nsymbt ... map machst nlabl
    return [0, 4, 8, 12, 28, 32, 36, 40, 44, 48, 88, 92, 152, 156, 208, 212, 220]


def _tiff_hot_offsets(path: Path) -> list[int]:
    offsets = [4]  # the first IFD offset
    with tifffile.TiffFile(path) as handle:
        for page in handle.pages:
            assert isinstance(page, tifffile.TiffPage)
            offsets.append(page.offset)
            for tag in page.tags:
                # tag code/type, count, value-or-offset of every entry
                offsets += [tag.offset, tag.offset + 2, tag.offset + 4, tag.offset + 8]
    return offsets


# -- readers under test ----------------------------------------------------------------------------


def _mrc_calls(path: Path) -> list[tuple[str, Callable[[], Any], type]]:
    def movie_frame() -> np.ndarray:
        with open_movie(path) as movie:
            return movie.frame(0)

    return [
        ("mrc.read", lambda: mrc.read(path), np.ndarray),
        ("mrc.read permissive", lambda: mrc.read(path, permissive=True, mmap=True), np.ndarray),
        ("mrc.read_slice", lambda: mrc.read_slice(path, 0), np.ndarray),
        ("movie", movie_frame, np.ndarray),
    ]


def _tiff_calls(path: Path) -> list[tuple[str, Callable[[], Any], type]]:
    def movie_frame() -> np.ndarray:
        with open_movie(path) as movie:
            return movie.frame(-1)

    return [
        ("tiff.read", lambda: tiff.read(path), np.ndarray),
        ("tiff.read_frame", lambda: tiff.read_frame(path, 0), np.ndarray),
        ("movie", movie_frame, np.ndarray),
    ]


KINDS: dict[str, tuple[str, Callable[[Path], None], Any, Any]] = {
    # kind: (file name, seed writer, mutation hot offsets or None for text, calls)
    "mrc": ("seed.mrc", _seed_mrc, _mrc_hot_offsets, _mrc_calls),
    "tiff": ("seed.tif", _seed_tiff, _tiff_hot_offsets, _tiff_calls),
    "cistem_star": ("seed.star", _seed_cistem_star, None,
                    lambda p: [("cistem_star.read", lambda: cistem_star.read(p),
                                ParticleParameters)]),
    "par": ("seed.par", _seed_par, None,
            lambda p: [("par.read", lambda: par.read(p), ParticleParameters)]),
    "relion_star": ("seed_relion.star", _seed_relion, None,
                    lambda p: [("relion_star.read", lambda: relion_star.read(p),
                                relion_star.RelionParticles)]),
    "positions": ("seed.txt", _seed_positions, None,
                  lambda p: [("positions.read", lambda: positions.read_with_warnings(p)[0],
                              list)]),
}


def _check_result(name: str, result: Any, expected: type) -> None:
    assert isinstance(result, expected), f"{name} returned {type(result)}"
    if isinstance(result, np.ndarray):
        assert result.ndim in (2, 3) and result.size > 0
    if isinstance(result, ParticleParameters):
        assert len({len(v) for v in result.columns.values()}) <= 1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_files_read_or_fail_cleanly(tmp_path: Path, kind: str) -> None:
    filename, make_seed, hot, calls = KINDS[kind]
    seed_path = tmp_path / ("seed_" + filename)
    make_seed(seed_path)
    seed = seed_path.read_bytes()
    # The unmutated seed reads.
    for name, call, expected in calls(seed_path):
        _check_result(name, call(), expected)
    assert info.describe(seed_path)["format"] == kind

    hot_offsets = hot(seed_path) if hot is not None else None
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    path = tmp_path / filename
    outcomes = {"ok": 0, "invalid": 0}
    slowest = (0.0, "")
    for trial in range(N_MUTATIONS):
        mutated = (_binary_mutation(seed, rng, hot_offsets) if hot_offsets is not None
                   else _text_mutation(seed, rng))
        path.write_bytes(mutated)
        for name, call, expected in [*calls(path),
                                     ("info.describe", lambda: info.describe(path), dict)]:
            start = time.perf_counter()
            try:
                result = call()
            except InvalidInputError as error:
                outcomes["invalid"] += 1
                assert str(error).strip(), f"{name}: empty message"
            except Exception as error:  # the bug this test hunts
                bad = tmp_path / f"failure_{kind}_{trial}.bin"
                bad.write_bytes(mutated)
                raise AssertionError(
                    f"{name} raised {type(error).__name__}: {error} on mutation {trial} "
                    f"(saved as {bad})"
                ) from error
            else:
                outcomes["ok"] += 1
                _check_result(name, result, expected)
            elapsed = time.perf_counter() - start
            if elapsed > slowest[0]:
                slowest = (elapsed, f"{name} on mutation {trial}")
            assert elapsed < MAX_SECONDS_PER_CALL, f"{name} took {elapsed:.2f} s (mutation {trial})"
    # The mutations must exercise both outcomes, or the test proves little.
    assert outcomes["ok"] > 0 and outcomes["invalid"] > 0, outcomes
    print(f"\n{kind}: {N_MUTATIONS} mutations, {outcomes}, slowest call "
          f"{slowest[0] * 1000:.1f} ms ({slowest[1]})")
