"""Benchmark Unblur (``cistemd.kernels.unblur.align_movie``) on simulated movies.

For a 24-frame 2048² movie (1 thread) and a 40-frame 4096² movie (2 threads)
simulated with the project's simulator (apoferritin-like particles in ice,
realistic beam-induced motion, 1.5 e/Å² per frame, uint16 counts written as an
MRC stack), this prints, as medians over repeats:

* wall time of the alignment + exposure-weighted sum, streaming the frames
  from the file (each repeat in a fresh child process);
* peak resident memory of that child (``ru_maxrss``), also as a multiple of the
  movie's float32 size;
* the reference time of the minimum FFT work of the algorithm, measured in the
  same child just before: one forward FFT per frame at full size plus one per
  frame at the pre-binned size (scipy.fft, same threads), and the ratio
  wall / reference;
* the RMS error of the recovered trajectory against the simulator's truth
  (after removing a common offset), so speed is never bought with accuracy.

  python benchmarks/unblur.py            # both sizes
  python benchmarks/unblur.py --quick    # only 2048² × 24
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    "2048x24": {"size": 2048, "frames": 24, "threads": 1, "particles": 60},
    "4096x40": {"size": 4096, "frames": 40, "threads": 2, "particles": 240},
}


def simulate(case: dict, directory: Path, seed: int = 7) -> tuple[Path, np.ndarray]:
    """Write a simulated movie; return its path and the true drift (Å, (n, 2))."""
    from cistemd.io import mrc
    from cistemd.kernels import simulate as sim
    from cistemd.kernels.ctf import CTFParams

    n, n_frames = case["size"], case["frames"]
    rng = np.random.default_rng(seed)
    model = sim.apoferritin_like_model(seed=0)
    positions = sim.random_particle_positions(
        case["particles"], (n, n), 1.0, min_separation_angstroms=2 * model.radius_angstroms,
        edge_margin_angstroms=model.radius_angstroms + 50, rng=rng,
    )  # fmt: skip
    angles = np.column_stack([
        rng.uniform(0, 360, len(positions)),
        np.degrees(np.arccos(rng.uniform(-1, 1, len(positions)))),
        rng.uniform(0, 360, len(positions)),
    ])  # fmt: skip
    drift = sim.realistic_beam_induced_motion(n_frames, rng=rng)
    frames, _ = sim.simulate_movie(
        model, shape=(n, n), pixel_size_angstroms=1.0,
        ctf=CTFParams(defocus_1_angstroms=14000, defocus_2_angstroms=13600),
        positions_angstroms=positions, euler_degrees=angles, n_frames=n_frames,
        exposure_per_frame_e_per_a2=1.5, rng=rng, frame_shifts_angstroms=drift,
    )  # fmt: skip
    path = directory / f"movie_{n}x{n_frames}.mrc"
    mrc.write(path, frames, voxel_size_angstroms=1.0, kind="stack")
    return path, drift


class _PlainReader:
    """Frames of an MRC stack read with plain reads (no memory map), one at a time.

    The project's reader memory-maps MRC files; the mapped page cache would show
    up in the resident size and hide what the alignment itself needs.
    """

    def __init__(self, path: str) -> None:
        from cistemd.io import mrc

        header = mrc.read_header(path)
        self.path = path
        self.shape = (header.ny, header.nx)
        self.n_frames = header.nz
        self.dtype = header.dtype
        self.offset = header.data_offset

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self):
        count = self.shape[0] * self.shape[1]
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for _ in range(self.n_frames):
                data = np.fromfile(handle, dtype=self.dtype, count=count)
                yield data.reshape(self.shape).astype(np.float32)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(movie: str, threads: int) -> None:
    """Run in a fresh process: FFT reference, then the alignment; print one JSON line."""
    from scipy import fft

    from cistemd.kernels import unblur

    params = unblur.UnblurParameters(exposure_per_frame_e_per_a2=1.5)
    # warm up (numba cache load, FFT plans) on a small movie
    warm = np.random.default_rng(0).poisson(2.0, size=(3, 256, 256)).astype(np.float32)
    unblur.align_movie(warm, pixel_size_angstroms=1.0, params=params, threads=threads)

    reader = _PlainReader(movie)
    geometry = unblur.movie_geometry(reader.shape, 1.0, params)
    binned = geometry.binned_shape
    start = time.perf_counter()
    for frame in reader:
        fft.rfft2(frame, workers=threads)
        fft.rfft2(frame[: binned[0], : binned[1]], workers=threads)
    reference = time.perf_counter() - start
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    baseline = _status("VmRSS")
    start = time.perf_counter()
    result = unblur.align_movie(reader, pixel_size_angstroms=1.0, params=params, threads=threads)
    wall = time.perf_counter() - start
    print(json.dumps({
        "wall_s": wall,
        "reference_s": reference,
        "baseline_rss": baseline,
        "peak_rss": _status("VmHWM"),
        "shifts_x": result.shifts_x_angstroms.tolist(),
        "shifts_y": result.shifts_y_angstroms.tolist(),
        "iterations": result.iterations,
    }))  # fmt: skip


def run_child(movie: Path, threads: int) -> dict:
    """Run :func:`child` in a subprocess and return its JSON."""
    completed = subprocess.run(
        [sys.executable, __file__, "--child", str(movie), "--threads", str(threads)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 2048² × 24 movie")
    parser.add_argument("--only", choices=sorted(CASES), default=None, help="one case")
    parser.add_argument("--repeats", type=int, default=3, help="child runs per case (default 3)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return 0
    names = ["2048x24"] if args.quick else list(CASES)
    if args.only:
        names = [args.only]
    print(f"cistemd unblur benchmark ({os.cpu_count()} CPUs visible)")
    with tempfile.TemporaryDirectory(prefix="unblur_bench_") as tmp:
        for name in names:
            case = CASES[name]
            started = time.perf_counter()
            movie, drift = simulate(case, Path(tmp))
            simulated = time.perf_counter() - started
            movie_f32 = case["size"] ** 2 * case["frames"] * 4
            walls, references, peaks, grown, rms = [], [], [], [], []
            for _ in range(args.repeats):
                figures = run_child(movie, case["threads"])
                walls.append(figures["wall_s"])
                references.append(figures["reference_s"])
                peaks.append(figures["peak_rss"])
                grown.append(figures["peak_rss"] - figures["baseline_rss"])
                recovered = np.column_stack([figures["shifts_x"], figures["shifts_y"]])
                error = recovered + drift
                error -= error.mean(axis=0)
                rms.append(math.sqrt(float(np.mean(np.sum(error**2, axis=1)))))
            wall = statistics.median(walls)
            reference = statistics.median(references)
            peak = statistics.median(peaks)
            growth = statistics.median(grown)
            print(
                f"{name} ({case['threads']} thread{'s' if case['threads'] > 1 else ''}; "
                f"simulated in {simulated:.0f} s):\n"
                f"  wall {wall:.2f} s (median of {', '.join(f'{w:.2f}' for w in walls)})\n"
                f"  minimum-FFT reference {reference:.2f} s -> ratio {wall / reference:.2f}\n"
                f"  peak RSS {peak / 2**20:.0f} MiB = {peak / movie_f32:.2f}x the float32 movie "
                f"({movie_f32 / 2**20:.0f} MiB); growth during the alignment "
                f"{growth / 2**20:.0f} MiB = {growth / movie_f32:.2f}x\n"
                f"  trajectory RMS error {statistics.median(rms):.3f} A, "
                f"rounds {figures['iterations']}"
            )
            movie.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
