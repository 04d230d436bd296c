"""Find particles in one micrograph with cisTEM's matched filter (Sigworth 2004).

Runs the picking kernel (cistemd.kernels.picking) without a daemon, like
cisTEM's find_particles program: the micrograph is resampled to the highest
resolution used, phase-flipped with its CTF, whitened against its background
and matched against CTF-filtered discs of the characteristic radius; peaks
above the threshold (σ of the background score) are kept at least the maximum
radius apart, away from the edges, outside abnormal-mean and high/low-
variance areas.

  cistem find-particles sum.mrc --pixel-size 1.0 --defocus-1 15200 --defocus-2 14800
  cistem find-particles sum.mrc --pixel-size 1.3 --defocus-1 12000 --defocus-2 11800
      --astigmatism-angle 35 --characteristic-radius 60 --max-radius 90 --json

Positions are in Å from the centre of the first pixel, x along the fast axis
(cisTEM's particle-position convention); --json prints
{"x": [...], "y": [...], "peak_height": [...]} plus the parameters used.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "find-particles"
HELP = "pick particles in a micrograph (matched filter, cisTEM's find_particles)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem find-particles`` arguments (defaults = cisTEM's find_particles)."""
    parser.add_argument("image", metavar="IMAGE", help="micrograph (MRC or TIFF)")
    parser.add_argument("--pixel-size", type=float, required=True, metavar="Å")
    parser.add_argument("--voltage", type=float, default=300.0, metavar="kV", help="default: 300")
    parser.add_argument("--cs", type=float, default=2.7, metavar="mm", help="default: 2.7")
    parser.add_argument(
        "--amplitude-contrast", type=float, default=0.07, metavar="AC", help="default: 0.07"
    )
    parser.add_argument("--defocus-1", type=float, required=True, metavar="Å")
    parser.add_argument("--defocus-2", type=float, required=True, metavar="Å")
    parser.add_argument(
        "--astigmatism-angle", type=float, default=0.0, metavar="deg", help="default: 0"
    )
    parser.add_argument(
        "--phase-shift", type=float, default=0.0, metavar="deg", help="default: 0"
    )
    parser.add_argument(
        "--max-radius", type=float, default=120.0, metavar="Å",
        help="maximum particle radius = exclusion radius (default: 120)",
    )
    parser.add_argument(
        "--characteristic-radius", type=float, default=80.0, metavar="Å",
        help="typical particle radius, the template's (default: 80)",
    )
    parser.add_argument(
        "--threshold", type=float, default=6.0, metavar="σ", help="peak threshold (default: 6)"
    )
    parser.add_argument(
        "--highest-resolution", type=float, default=30.0, metavar="Å", help="default: 30"
    )
    parser.add_argument(
        "--min-edge-distance", type=int, default=128, metavar="px", help="default: 128"
    )
    parser.add_argument(
        "--avoid-high-variance", action=argparse.BooleanOptionalAction, default=True,
        help="exclude high local-variance areas (default: on)",
    )
    parser.add_argument(
        "--avoid-low-variance", action=argparse.BooleanOptionalAction, default=True,
        help="exclude low local-variance areas (default: on)",
    )
    parser.add_argument(
        "--avoid-abnormal-mean", action=argparse.BooleanOptionalAction, default=True,
        help="exclude areas of abnormal local mean (default: on)",
    )
    parser.add_argument(
        "--background-boxes", type=int, default=50, metavar="N", help="default: 50"
    )
    parser.add_argument(
        "--background-algorithm", choices=("lowest", "mean"), default="lowest",
        help="boxes of lowest local variance, or nearest the typical variance (default: lowest)",
    )
    parser.add_argument(
        "--particles-white", action="store_true", help="protein is bright in the image"
    )
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="default: 1")
    parser.add_argument("--json", action="store_true", help="print the picks as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Pick particles; print them; 0 on success, 2 on bad input."""
    import math

    from cistemd.actions.find_particles import read_micrograph
    from cistemd.errors import InvalidInputError
    from cistemd.kernels.ctf import CTFParams
    from cistemd.kernels.picking import PickingParams, find_particles

    try:
        ctf = CTFParams(
            defocus_1_angstroms=args.defocus_1,
            defocus_2_angstroms=args.defocus_2,
            astigmatism_angle_degrees=args.astigmatism_angle,
            voltage_kv=args.voltage,
            spherical_aberration_mm=args.cs,
            amplitude_contrast=args.amplitude_contrast,
            additional_phase_shift_radians=math.radians(args.phase_shift),
        )
        params = PickingParams(
            characteristic_radius_angstroms=args.characteristic_radius,
            maximum_radius_angstroms=args.max_radius,
            threshold_sigma=args.threshold,
            highest_resolution_angstroms=args.highest_resolution,
            minimum_distance_from_edges_px=args.min_edge_distance,
            avoid_high_variance=args.avoid_high_variance,
            avoid_low_variance=args.avoid_low_variance,
            avoid_abnormal_local_mean=args.avoid_abnormal_mean,
            number_of_background_boxes=args.background_boxes,
            background_algorithm=args.background_algorithm,
            particles_are_white=args.particles_white,
        )
        if not args.pixel_size > 0:
            raise ValueError(f"--pixel-size must be positive, got {args.pixel_size}")
        image = read_micrograph(args.image)
        picks = find_particles(image, pixel_size_angstroms=args.pixel_size, ctf=ctf,
                               params=params, threads=args.threads)
    except (InvalidInputError, ValueError) as error:
        print(f"cistem find-particles: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({
            "image": args.image,
            "x": [round(float(v), 3) for v in picks.x_angstroms],
            "y": [round(float(v), 3) for v in picks.y_angstroms],
            "peak_height": [round(float(v), 4) for v in picks.peak_height],
            "n_particles": len(picks),
            "pixel_size_angstroms": args.pixel_size,
        }))
        return 0
    print(f"# {len(picks)} particles in {args.image} (x, y in Å; peak height in σ)")
    for x, y, h in zip(picks.x_angstroms, picks.y_angstroms, picks.peak_height, strict=True):
        print(f"{x:10.2f} {y:10.2f} {h:8.2f}")
    return 0
