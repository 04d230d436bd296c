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

``--accuracy`` also estimates 30 simulated 2048² micrographs over the issue's
range (1.0/1.5 Å/px, 200/300 kV, Cs 0.01/2.7 mm, 0.6-3.2 µm, astigmatism
0-1,200 Å, 30-50 e/Å²; 12 with a phase plate, 0.2-1.8 rad) and prints each
error next to its Cramér–Rao bound (σ, from a noise-free twin of the same
micrograph; an efficient estimator's median |error| is 0.67 × σ).
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
    parser.add_argument("--accuracy", action="store_true", help="also the 30-micrograph sweep")
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
    if args.accuracy:
        accuracy()


def accuracy(n_plain: int = 18, n_phase_plate: int = 12) -> None:
    """Print the sweep's errors and Cramér–Rao bounds (module docstring)."""
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_ctffind_kernel import cramer_rao_bounds, errors, simulated_micrograph, sweep_case

    from cistemd.kernels.ctffind import CTFFindSettings, estimate_ctf

    rng = np.random.default_rng(99)
    rows = []
    print(f"{'#':>2} {'Å/px':>4} {'kV':>3} {'Cs':>4} {'df Å':>6} {'astig':>5} "
          f"{'mean err (σ)':>13} {'astig err (σ)':>14} {'azimuth° (σ)':>13} {'phase° (σ)':>12}")
    for index in range(n_plain + n_phase_plate):
        phase_plate = index >= n_plain
        pixel, truth, dose = sweep_case(index, rng, phase_plate)
        image = simulated_micrograph(1000 + index, pixel, truth, dose)
        settings = CTFFindSettings(find_phase_shift=phase_plate, max_phase_shift_radians=math.pi,
                                   phase_shift_step_radians=math.radians(10.0))
        result = estimate_ctf(image, pixel_size_angstroms=pixel, voltage_kv=truth.voltage_kv,
                              spherical_aberration_mm=truth.spherical_aberration_mm,
                              settings=settings)
        mean_error, astig_error, angle_error = errors(result.ctf, truth)
        noise_free = simulated_micrograph(1000 + index, pixel, truth, dose, shot_noise=False)
        bounds = cramer_rao_bounds(noise_free.astype(np.float64), dose * pixel * pixel, pixel,
                                   truth, (30.0, 5.0), phase=phase_plate)
        phase_error = math.degrees(abs(result.phase_shift_radians
                                       - truth.additional_phase_shift_radians))
        phase_bound = math.degrees(bounds[3]) if phase_plate else math.nan
        astig = truth.defocus_1_angstroms - truth.defocus_2_angstroms
        rows.append((mean_error, bounds[0], astig_error, bounds[1], angle_error,
                     math.degrees(bounds[2]), phase_error, phase_bound, astig, phase_plate))
        print(f"{index:>2} {pixel:>4.1f} {truth.voltage_kv:>3.0f} "
              f"{truth.spherical_aberration_mm:>4} {truth.mean_defocus_angstroms:>6.0f} "
              f"{astig:>5.0f} {mean_error:>6.1f} ({bounds[0]:>4.1f}) "
              f"{astig_error:>6.1f} ({bounds[1]:>5.1f}) {angle_error:>5.2f} "
              f"({math.degrees(bounds[2]):>5.2f})"
              + (f" {phase_error:>5.2f} ({phase_bound:>4.2f})" if phase_plate else ""))
    table = np.array(rows, dtype=float)
    plain, plate = table[table[:, 9] == 0], table[table[:, 9] == 1]
    big = plain[:, 8] > 300
    median = np.median
    print(f"no phase plate ({len(plain)}): |mean defocus error| median {median(plain[:, 0]):.1f} Å "
          f"(bound σ median {median(plain[:, 1]):.1f} Å), worst {plain[:, 0].max():.1f} Å; "
          f"astigmatism {median(plain[:, 2]):.1f} Å (σ {median(plain[:, 3]):.1f}); "
          f"azimuth where astigmatism > 300 Å {median(plain[big, 4]):.2f}° "
          f"(σ {median(plain[big, 5]):.2f}°)")
    print(f"phase plate ({len(plate)}): |mean defocus error| median {median(plate[:, 0]):.1f} Å "
          f"(σ {median(plate[:, 1]):.1f}); phase median {median(plate[:, 6]):.2f}° "
          f"(σ {median(plate[:, 7]):.2f}°), worst {plate[:, 6].max():.2f}°")


if __name__ == "__main__":
    main()
