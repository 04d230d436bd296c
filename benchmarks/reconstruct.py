"""Reconstruction throughput: CTF-weighted trilinear insertion, and merging dumps.

Prints, for boxes 128 and 256 (padding 1, as cisTEM's reconstruct3d):

* particles inserted per second on one core (``Reconstruction.insert`` with
  the CTF, score weighting off, C1: image FFT + phase shift + CTF + trilinear
  spreading into both accumulators), median (and best) of ``--repeats`` batches;
* the same-run reference: ``scipy.fft.rfft2`` of the same images on one core
  (one 2-D FFT per particle), timed right after each insertion batch, and the
  median over those pairs of insertion time / FFT time;
* projection (central-slice extraction with CTF, padding 2) per second, for
  comparison;

and the time to merge 16 dump files of a 256³ reconstruction (read 16
``.npz`` dumps from the page cache and add them), median of ``--repeats``.
Never fails on an absolute time: the machine may be shared.

Run: ``.venv/bin/python benchmarks/reconstruct.py [--repeats 3] [--dir /tmp]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.fft

from cistemd.io.dump import read_dump, write_dump
from cistemd.kernels import projection
from cistemd.kernels.reconstruct import ParticleBatch, Reconstruction
from cistemd.kernels.rotation import random_orientations


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: numba compilation / cache load, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch(n: int, m: int, rng: np.random.Generator) -> ParticleBatch:
    defocus = rng.uniform(8000.0, 20000.0, m)
    return ParticleBatch(
        images=rng.normal(size=(m, n, n)).astype(np.float32),
        euler_degrees=random_orientations(m, rng),
        shifts_angstroms=rng.uniform(-3.0, 3.0, (m, 2)),
        defocus=np.stack([defocus, defocus - 200.0, np.full(m, 30.0)], axis=1),
        phase_shift_degrees=np.zeros(m),
        voltage_kv=np.full(m, 300.0),
        spherical_aberration_mm=np.full(m, 2.7),
        amplitude_contrast=np.full(m, 0.07),
        weights=np.ones(m),
        score_b_factors=np.zeros(m),
        halves=np.arange(m) % 2,
    )


def paired_seconds(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Time ``first`` and ``second`` back to back ``repeats`` times (after a warm-up of each).

    Alternating keeps both under the same load when the machine is shared, so
    the per-pair ratio is meaningful even when absolute times are not.
    """
    first()
    second()
    times_1, times_2 = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        first()
        times_1.append(time.perf_counter() - start)
        start = time.perf_counter()
        second()
        times_2.append(time.perf_counter() - start)
    return times_1, times_2


def insertion(n: int, m: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    particles = batch(n, m, rng)
    rec = Reconstruction.empty(n, 1.0)
    insert_times, fft_times = paired_seconds(
        lambda: rec.insert(particles, workers=1),
        lambda: scipy.fft.rfft2(particles.images, workers=1),
        repeats,
    )
    ratios = [a / b for a, b in zip(insert_times, fft_times, strict=True)]
    projector = projection.prepare_projector(rng.normal(size=(n, n, n)).astype(np.float32))
    from cistemd.kernels.ctf import CTFParams

    ctf = CTFParams(defocus_1_angstroms=12000.0, defocus_2_angstroms=11000.0)
    project_seconds = median_seconds(
        lambda: projection.project(
            projector, particles.euler_degrees, pixel_size_angstroms=1.0, ctf=ctf, workers=1
        ),
        repeats,
    )
    print(
        f"box {n:4d}: insert {m / statistics.median(insert_times):7.0f} particles/s/core "
        f"(best {m / min(insert_times):5.0f}) | one rfft2 per particle "
        f"{m / statistics.median(fft_times):7.0f}/s (best {m / min(fft_times):6.0f}) | "
        f"insertion = {statistics.median(ratios):5.1f} x FFT (median of pairs) | "
        f"project {m / project_seconds:5.0f}/s/core"
    )


def merging(n: int, dumps: int, repeats: int, directory: str | None) -> None:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        paths = []
        for index in range(dumps):
            rec = Reconstruction.empty(n, 1.0)
            rec.accumulator[:] = rng.random(rec.accumulator.shape, dtype=np.float32)
            rec.particle_counts[:] = 1
            path = Path(tmp) / f"dump_{index}.npz"
            write_dump(path, rec)
            paths.append(path)
            del rec

        def merge() -> None:
            merged, _ = read_dump(paths[0])
            for path in paths[1:]:
                merged.merge(read_dump(path)[0])

        seconds = median_seconds(merge, repeats)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(
            f"merge {dumps} dumps of a {n}^3 reconstruction ({size_mb:.0f} MB): "
            f"{seconds:.2f} s ({size_mb / seconds:.0f} MB/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory for the dump files")
    args = parser.parse_args()
    insertion(128, 1000, args.repeats)
    insertion(256, 300, args.repeats)
    merging(256, 16, args.repeats, args.dir)


if __name__ == "__main__":
    main()
