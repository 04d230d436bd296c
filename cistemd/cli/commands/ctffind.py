"""Estimate defocus, astigmatism and phase shift of a micrograph or movie (CTFFIND4-class).

  cistem ctffind micrograph.mrc --pixel-size 1.0 --voltage 300 --cs 2.7
  cistem ctffind movie.tif --pixel-size 0.8 --frames-to-average 3 --json
  cistem ctffind image.mrc --pixel-size 1.0 --phase-shift --min-phase 0 --max-phase 180

Writes CTFFIND's three outputs: the diagnostic image (--diagnostic, default
<input>_ctffind.mrc: the background-subtracted spectrum with the fitted CTF
in the upper-right quadrant and its zeros drawn), the results .txt (one row:
number, defocus 1, defocus 2, azimuth, phase shift, score, fit resolution,
tilt axis, tilt, thickness) and the 1-D curves _avrot.txt, next to the
diagnostic. Defocus in Å, positive = underfocus, df1 ≥ df2, azimuth of df1
in degrees from the x axis; phase shift in radians in the outputs.

--json prints one object: defocus_1, defocus_2, astigmatism_angle (°),
phase_shift (rad), score, fit_resolution (Å), aliasing_resolution,
confident, warnings and the output paths. A fit without reliable Thon rings
is reported with a warning (and "confident": false); the exit status is
still 0.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "ctffind"
HELP = "estimate the CTF (defocus, astigmatism, phase shift) of a micrograph or movie"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem ctffind`` arguments (defaults = CTFFIND's)."""
    parser.add_argument("input", metavar="IMAGE_OR_MOVIE", help="MRC micrograph, MRC/TIFF movie")
    parser.add_argument("--pixel-size", type=float, required=True, metavar="Å", help="Å/pixel")
    parser.add_argument("--voltage", type=float, default=300.0, metavar="kV", help="default: 300")
    parser.add_argument("--cs", type=float, default=2.7, metavar="mm", help="default: 2.7")
    parser.add_argument(
        "--amplitude-contrast", type=float, default=0.07, metavar="AC", help="default: 0.07"
    )
    parser.add_argument("--box", type=int, default=512, metavar="PX", help="default: 512")
    parser.add_argument("--min-res", type=float, default=30.0, metavar="Å", help="default: 30")
    parser.add_argument("--max-res", type=float, default=5.0, metavar="Å", help="default: 5")
    parser.add_argument(
        "--min-defocus", type=float, default=5000.0, metavar="Å", help="default: 5000"
    )
    parser.add_argument(
        "--max-defocus", type=float, default=50000.0, metavar="Å", help="default: 50000"
    )
    parser.add_argument(
        "--defocus-step", type=float, default=100.0, metavar="Å", help="default: 100"
    )
    parser.add_argument(
        "--exhaustive",
        action="store_true",
        help="slower, exhaustive search (large astigmatism expected)",
    )
    parser.add_argument(
        "--astigmatism-tolerance",
        type=float,
        default=None,
        metavar="Å",
        help="restrain the astigmatism to about this (default: unrestrained)",
    )
    parser.add_argument(
        "--phase-shift", action="store_true", help="also find an additional phase shift"
    )
    parser.add_argument("--min-phase", type=float, default=0.0, metavar="deg", help="default: 0")
    parser.add_argument(
        "--max-phase", type=float, default=180.0, metavar="deg", help="default: 180"
    )
    parser.add_argument("--phase-step", type=float, default=10.0, metavar="deg", help="default: 10")
    parser.add_argument(
        "--frames-to-average",
        type=int,
        default=1,
        metavar="N",
        help="movie frames summed per spectrum (default: 1)",
    )
    parser.add_argument("--gain", default=None, metavar="FILE", help="gain reference (movies)")
    parser.add_argument("--dark", default=None, metavar="FILE", help="dark reference (movies)")
    parser.add_argument(
        "--no-resample",
        action="store_true",
        help="do not resample the spectrum to 1.4 Å when the pixel is smaller",
    )
    parser.add_argument(
        "--diagnostic",
        default=None,
        metavar="OUT.mrc",
        help="diagnostic image (default: <input>_ctffind.mrc); .txt and _avrot.txt go next to it",
    )
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="default: 1")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Estimate the CTF; print it; 0 on success, 2 on bad input."""
    import os

    from cistemd.actions.find_ctf import run_ctffind_on_file
    from cistemd.errors import InvalidInputError

    if not os.path.exists(args.input):
        print(f"cistem ctffind: {args.input}: no such file", file=sys.stderr)
        return 2
    diagnostic = args.diagnostic
    if diagnostic is None:
        stem = os.path.splitext(args.input)[0]
        diagnostic = stem + "_ctffind.mrc"
    parameters = {
        "pixel_size": args.pixel_size,
        "voltage": args.voltage,
        "spherical_aberration": args.cs,
        "amplitude_contrast": args.amplitude_contrast,
        "frames_to_average": args.frames_to_average,
        "box_size": args.box,
        "min_resolution": args.min_res,
        "max_resolution": args.max_res,
        "min_defocus": args.min_defocus,
        "max_defocus": args.max_defocus,
        "defocus_step": args.defocus_step,
        "large_astigmatism_expected": args.exhaustive,
        "restrain_astigmatism": args.astigmatism_tolerance is not None,
        "astigmatism_tolerance": args.astigmatism_tolerance or 500.0,
        "find_phase_shift": args.phase_shift,
        "min_phase_shift": args.min_phase,
        "max_phase_shift": args.max_phase,
        "phase_shift_step": args.phase_step,
        "resample": not args.no_resample,
    }
    try:
        if not args.pixel_size > 0:
            raise InvalidInputError(f"--pixel-size must be positive, got {args.pixel_size}")
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
        summary = run_ctffind_on_file(
            args.input,
            parameters=parameters,
            diagnostic_path=diagnostic,
            gain=args.gain,
            dark=args.dark,
            threads=args.threads,
        )
    except (InvalidInputError, ValueError) as error:
        print(f"cistem ctffind: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return 0
    print(f"{summary['input']}: {summary['n_frames']} frame(s)")
    print(
        f"  defocus 1 {summary['defocus_1']:.1f} Å, defocus 2 {summary['defocus_2']:.1f} Å, "
        f"azimuth {summary['astigmatism_angle']:.2f}°, phase shift "
        f"{summary['phase_shift']:.3f} rad"
    )
    print(
        f"  score {summary['score']:.4f}, Thon rings fit to {summary['fit_resolution']:.2f} Å"
        + (
            f", aliasing from {summary['aliasing_resolution']:.2f} Å"
            if summary["aliasing_resolution"] > 0
            else ""
        )
    )
    for warning in summary["warnings"]:
        print(f"  warning: {warning}")
    print(f"  diagnostic: {summary['diagnostic']}")
    print(f"  results: {summary['text']}")
    print(f"  curves: {summary['avrot']}")
    return 0
