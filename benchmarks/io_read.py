"""Reader throughput: cistemd.io against numpy.fromfile of the same bytes.

Writes, in a temporary directory,

* a 4096 × 4096 × 4 float32 MRC stack (268 MB), and
* a 4096 × 4096 × 20 uint8 LZW TIFF movie of sparse electron counts (335 MB
  decoded), as SerialEM writes counting-mode frames, plus an uncompressed raw
  file with the same number of pixels,

then times repeated reads (median of ``--repeats``, after one warm-up read so
all runs come from the page cache) and prints MB/s (decoded bytes per second)
and the ratio to ``numpy.fromfile`` of the same bytes (for the TIFF: of the
uncompressed raw file of equal size). Never fails on an absolute time.

Run: ``.venv/bin/python benchmarks/io_read.py [--repeats 5] [--dir /tmp]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cistemd.io import mrc, tiff

SIDE = 4096
MRC_SECTIONS = 4
TIFF_FRAMES = 20


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: page cache, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def report(name: str, nbytes: int, seconds: float, reference_seconds: float) -> None:
    rate = nbytes / seconds / 1e6
    reference_rate = nbytes / reference_seconds / 1e6
    print(f"  {name:<38} {rate:9.0f} MB/s   ({seconds * 1000:7.1f} ms; "
          f"{rate / reference_rate:5.2f}× numpy.fromfile)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the temporary files")
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpus: {os.cpu_count()}, repeats: {arguments.repeats} (median)")

    with tempfile.TemporaryDirectory(dir=arguments.dir) as directory:
        folder = Path(directory)

        # MRC -----------------------------------------------------------------------------
        stack = rng.normal(size=(MRC_SECTIONS, SIDE, SIDE)).astype(np.float32)
        mrc_path = folder / "stack.mrc"
        mrc.write(mrc_path, stack, voxel_size_angstroms=1.0)
        header = mrc.read_header(mrc_path)
        count = stack.size
        del stack

        def mrc_fromfile() -> np.ndarray:
            with open(mrc_path, "rb") as handle:
                handle.seek(header.data_offset)
                return np.fromfile(handle, dtype=np.float32, count=count)

        nbytes = header.data_bytes
        print(f"\nMRC {SIDE}×{SIDE}×{MRC_SECTIONS} float32, {nbytes / 1e6:.0f} MB")
        reference = median_seconds(mrc_fromfile, arguments.repeats)
        report("numpy.fromfile (reference)", nbytes, reference, reference)
        report("mrc.read(mmap=False)", nbytes,
               median_seconds(lambda: mrc.read(mrc_path, mmap=False), arguments.repeats),
               reference)
        report("mrc.read(mmap=True) + copy", nbytes,
               median_seconds(lambda: np.array(mrc.read(mrc_path, mmap=True)),
                              arguments.repeats), reference)
        report("mrc.read_slice × all sections", nbytes,
               median_seconds(lambda: [mrc.read_slice(mrc_path, i) for i in range(MRC_SECTIONS)],
                              arguments.repeats), reference)

        # LZW TIFF --------------------------------------------------------------------------
        movie = rng.poisson(0.8, size=(TIFF_FRAMES, SIDE, SIDE)).astype(np.uint8)
        tiff_path = folder / "movie.tif"
        raw_path = folder / "movie.raw"
        tiff.write(tiff_path, movie, compression="lzw")
        movie.tofile(raw_path)
        nbytes = movie.nbytes
        del movie
        compressed = tiff_path.stat().st_size
        print(f"\nTIFF {SIDE}×{SIDE}×{TIFF_FRAMES} uint8 LZW (Poisson 0.8 e/px), "
              f"{nbytes / 1e6:.0f} MB decoded, {compressed / 1e6:.0f} MB on disk "
              f"(ratio {nbytes / compressed:.1f})")
        reference = median_seconds(lambda: np.fromfile(raw_path, dtype=np.uint8),
                                   arguments.repeats)
        report("numpy.fromfile of raw (reference)", nbytes, reference, reference)
        report("tiff.read (all frames)", nbytes,
               median_seconds(lambda: tiff.read(tiff_path), arguments.repeats), reference)

        def frame_by_frame() -> list[np.ndarray]:
            with tiff.open_tiff(tiff_path) as opened:
                return [opened.frame(i) for i in range(TIFF_FRAMES)]

        report("open_tiff().frame(i) × all frames", nbytes,
               median_seconds(frame_by_frame, arguments.repeats), reference)


if __name__ == "__main__":
    main()
