"""Benchmark CTF estimation on a 4096² micrograph (``python benchmarks/ctffind.py``).

Prints, as medians over ``--repeats`` runs:

* the wall time of :func:`cistemd.kernels.ctffind.estimate_ctf` with the
  default search, single-threaded and with every core (FFT workers);
* the time of the tile FFTs the estimate must compute (the same tiles,
  float32 ``rfft2``, single-threaded) -- the floor of any tile-averaging
  estimator -- and the ratio of the single-threaded estimate to it;
* the fit, against the known truth.

The micrograph is the project's simulator output (apoferritin in 300 Å ice,
40 e/Å², 1.0 Å/px, so the spectrum is resampled to 1.4 Å from 720-px tiles)
unless ``--ring-field`` asks for a noise-filtered-by-CTF field (no particles).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _micrograph(size: int, pixel: float, ring_field: bool) -> tuple[np.ndarray, object]:
    from cistemd.kernels import simulate
    from cistemd.kernels.ctf import CTFParams, ctf_2d
    from cistemd.kernels.rotation import random_orientations

    truth = CTFParams(
        defocus_1_angstroms=15400.0, defocus_2_angstroms=14600.0, astigmatism_angle_degrees=25.0
    )
    rng = np.random.default_rng(0)
    if ring_field:
        shape = (size, size)
        transfer = ctf_2d(shape, pixel, truth, envelope_b_factor_angstroms2=60.0, rfft=True)
        signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
        return (0.5 * signal + rng.standard_normal(shape)).astype(np.float32), truth
    model = simulate.apoferritin_like_model(seed=0)
    positions = simulate.random_particle_positions(
        300,
        (size, size),
        pixel,
        min_separation_angstroms=2 * model.radius_angstroms,
        edge_margin_angstroms=model.radius_angstroms + 10,
        rng=rng,
    )
    image, _ = simulate.simulate_micrograph(
        model,
        shape=(size, size),
        pixel_size_angstroms=pixel,
        ctf=truth,
        positions_angstroms=positions,
        euler_degrees=random_orientations(positions.shape[0], rng),
        exposure_e_per_a2=40.0,
        rng=rng,
    )
    return image, truth


def _tile_fft_time(image: np.ndarray, tile: int) -> float:
    import scipy.fft

    from cistemd.kernels.ctffind import tile_starts

    starts = [
        (y, x) for y in tile_starts(image.shape[0], tile) for x in tile_starts(image.shape[1], tile)
    ]
    stack = np.stack([image[y : y + tile, x : x + tile] for y, x in starts]).astype(np.float32)
    begin = time.perf_counter()
    for first in range(0, len(stack), 8):
        scipy.fft.rfft2(stack[first : first + 8], workers=1)
    return time.perf_counter() - begin


def main() -> None:
    """Run the benchmark and print its figures."""
    from cistemd.kernels.ctffind import estimate_ctf, tile_size_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--pixel-size", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ring-field", action="store_true")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    image, _ = _micrograph(args.size, args.pixel_size, args.ring_field)
    estimate_ctf(image[:1024, :1024], pixel_size_angstroms=args.pixel_size)  # JIT warm-up
    tile = tile_size_for(args.pixel_size, 512)
    fft_times, single, multi = [], [], []
    result = None
    for _ in range(args.repeats):
        fft_times.append(_tile_fft_time(image, tile))
        begin = time.perf_counter()
        result = estimate_ctf(image, pixel_size_angstroms=args.pixel_size, threads=1)
        single.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        estimate_ctf(image, pixel_size_angstroms=args.pixel_size, threads=cores)
        multi.append(time.perf_counter() - begin)
    assert result is not None
    fft = statistics.median(fft_times)
    one = statistics.median(single)
    print(f"micrograph {args.size}² at {args.pixel_size} Å/px, {result.n_tiles} tiles of {tile}²")
    print(f"tile FFTs (1 thread):            {fft * 1e3:8.1f} ms")
    print(f"estimate_ctf, 1 thread:          {one * 1e3:8.1f} ms")
    print(f"estimate_ctf, {cores} threads:         {statistics.median(multi) * 1e3:8.1f} ms")
    print(f"ratio (1 thread / tile FFTs):    {one / fft:8.2f}")
    ctf = result.ctf
    print(
        f"fit: df1 {ctf.defocus_1_angstroms:.1f} df2 {ctf.defocus_2_angstroms:.1f} "
        f"angle {ctf.astigmatism_angle_degrees:.2f} (truth 15400 / 14600 / 25); "
        f"score {result.score:.3f}, fit resolution {result.fit_resolution_angstroms:.2f} Å"
    )


if __name__ == "__main__":
    main()
