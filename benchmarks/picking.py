"""Find Particles: wall time per 4096² micrograph, against the FFT work it must do.

Simulates one 4096 × 4096 micrograph (1.0 Å/px, apoferritin, 1.8 µm defocus,
40 e/Å²), then times ``cistemd.kernels.picking.find_particles`` with the
default parameters on one thread (median of ``--repeats`` after a warm-up)
and, in the same run, the unavoidable work: one forward real FFT of the
whole float32 micrograph (``scipy.fft.rfft2``, one worker). Prints both and
their ratio. Never fails on an absolute time.

``--accuracy`` also prints recall, precision (a pick within 0.2 × the particle
diameter of a true centre) and the median position error on simulated 2048²
micrographs over the issue's range (1-1.5 Å/px, 0.8-2.5 µm, 30-50 e/Å²,
120 Å, 135 Å and ~200 Å particles), and the extraction correlation with the
simulator's own projection.

Run: ``.venv/bin/python benchmarks/picking.py [--repeats 5] [--threads 1] [--accuracy]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import fft as sfft

from cistemd.kernels import picking, simulate
from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import random_orientations

SIDE = 4096


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: lazy imports, FFT plans
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(repeats: int, threads: int) -> None:
    rng = np.random.default_rng(0)
    model = simulate.apoferritin_like_model(seed=0)
    positions = simulate.random_particle_positions(
        500, (SIDE, SIDE), 1.0, min_separation_angstroms=175.0, edge_margin_angstroms=140.0,
        rng=rng,
    )
    ctf = CTFParams(defocus_1_angstroms=18150.0, defocus_2_angstroms=17850.0,
                    astigmatism_angle_degrees=30.0)
    start = time.perf_counter()
    image, _ = simulate.simulate_micrograph(
        model, shape=(SIDE, SIDE), pixel_size_angstroms=1.0, ctf=ctf,
        positions_angstroms=positions, euler_degrees=random_orientations(len(positions), rng),
        exposure_e_per_a2=40.0, rng=rng,
    )
    print(f"simulated a {SIDE}² micrograph with {len(positions)} particles in "
          f"{time.perf_counter() - start:.1f} s")
    counts = image  # uint16 counts, as a detector writes them

    def pick() -> object:
        return picking.find_particles(counts, pixel_size_angstroms=1.0, ctf=ctf, threads=threads)

    def fft_only() -> object:
        return sfft.rfft2(counts.astype(np.float32), workers=threads)

    pick_s = median_seconds(pick, repeats)
    fft_s = median_seconds(fft_only, repeats)
    n = len(picking.find_particles(counts, pixel_size_angstroms=1.0, ctf=ctf, threads=threads))
    print(f"find_particles, {threads} thread(s): {pick_s:6.3f} s per {SIDE}² micrograph "
          f"(median of {repeats}; {n} picks of {len(positions)} particles)")
    print(f"reference rfft2 of the float32 micrograph: {fft_s:6.3f} s")
    print(f"ratio find_particles / rfft2: {pick_s / fft_s:5.2f}")


def accuracy() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_picking import (
        _big_model,
        _globule_model,
        _small_model,
        score_picks,
        simulate_case,
    )

    models = {"apoferritin (135 Å)": simulate.apoferritin_like_model(seed=0),
              "small (~120 Å)": _small_model(), "big (~200 Å)": _big_model()}
    globule = _globule_model()
    cases = [
        (1.0, 8000.0, 30.0), (1.0, 12000.0, 40.0), (1.5, 15000.0, 40.0),
        (1.25, 20000.0, 30.0), (1.0, 25000.0, 50.0), (1.5, 25000.0, 30.0),
    ]
    print(f"{'particle':<20} {'Å/px':>5} {'df Å':>7} {'e/Å²':>5} {'recall':>7} "
          f"{'precision':>9} {'err Å':>6} {'picks':>6}")
    for name, model in models.items():
        for seed, (pixel, defocus, exposure) in enumerate(cases):
            image, ctf, truth, diameter = simulate_case(model, pixel, defocus, exposure, 20 + seed)
            figures = score_picks(
                picking.find_particles(image, pixel_size_angstroms=pixel, ctf=ctf), truth,
                diameter,
            )
            print(f"{name:<20} {pixel:>5.2f} {defocus:>7.0f} {exposure:>5.0f} "
                  f"{figures['recall']:>7.3f} {figures['precision']:>9.3f} "
                  f"{figures['median_error']:>6.2f} {figures['n']:>6}")
    # The hardest corner, pooled: one crowded 2048² micrograph holds only ~70
    # particles of 135 Å, so its recall alone moves by ±0.05 with the noise.
    corner = {"apoferritin (135 Å)": models["apoferritin (135 Å)"],
              "small (~120 Å, hollow, 340 kDa)": models["small (~120 Å)"],
              "solid globule (120 Å, 750 kDa)": globule}
    for name, model in corner.items():
        found = total = correct = picked = 0.0
        for seed in (20, 30, 31, 32, 33, 8):
            image, ctf, truth, diameter = simulate_case(model, 1.0, 8000.0, 30.0, seed)
            figures = score_picks(
                picking.find_particles(image, pixel_size_angstroms=1.0, ctf=ctf), truth, diameter
            )
            found += figures["recall"] * len(truth)
            total += len(truth)
            correct += figures["precision"] * figures["n"]
            picked += figures["n"]
        print(f"{name}, 1 Å/px, 0.8 µm, 30 e/Å², 6 micrographs pooled: recall "
              f"{found / total:.3f}, precision {correct / picked:.3f} ({int(total)} particles)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accuracy", action="store_true", help="also print accuracy figures")
    arguments = parser.parse_args()
    speed(arguments.repeats, arguments.threads)
    if arguments.accuracy:
        accuracy()


if __name__ == "__main__":
    main()
