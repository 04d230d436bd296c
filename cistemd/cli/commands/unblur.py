r"""Align the frames of a movie and write the exposure-weighted sum (cisTEM's unblur).

Unblur (Grant & Grigorieff 2015) as cisTEM runs it: frames pre-binned to about
5 Å/px are aligned to the sum of the other frames (B-factor filtered, central
cross masked, parabola-fitted peaks, smoothed trajectories), then refined at
full resolution; the sum is weighted by the exposure filter (Grant &
Grigorieff's critical exposure, 300/200/100 kV) with the noise power restored.
Input: MRC stack or TIFF (LZW or uncompressed; a missing SampleFormat tag
means unsigned integers). Defaults are those of cisTEM's Align Movies panel.

Shifts (the shift file, --json "shifts_x"/"shifts_y") are per frame, in Å,
with cisTEM's sign: the shift APPLIED to each frame to align it (the frame's
content moves by +shift), relative to the middle frame (index n // 2 from 0,
whose shift is 0). A specimen that drifted by +d in a frame gets -d.

  cistem unblur movie.tif --output sum.mrc --pixel-size 1.0 --exposure-per-frame 1.5
  cistem unblur movie.mrc --output sum.mrc --pixel-size 0.83 --exposure-per-frame 1.2 \\
      --voltage 300 --gain gain.mrc --output-pixel-size 1.66 --json
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "unblur"
HELP = "align a movie's frames and write the exposure-weighted sum"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem unblur`` arguments (defaults = cisTEM's Align Movies panel)."""
    parser.add_argument("movie", metavar="MOVIE", help="MRC stack or TIFF movie")
    parser.add_argument("--output", "-o", required=True, metavar="SUM.mrc", help="aligned sum")
    parser.add_argument(
        "--pixel-size", type=float, default=None, metavar="Å",
        help="pixel size of the movie (default: from its header)",
    )
    parser.add_argument(
        "--exposure-per-frame", type=float, required=True, metavar="e/Å²",
        help="exposure per frame",
    )
    parser.add_argument(
        "--voltage", type=float, default=300.0, metavar="kV",
        help="300, 200 or 100 (default: 300)",
    )
    parser.add_argument(
        "--pre-exposure", type=float, default=0.0, metavar="e/Å²", help="default: 0"
    )
    parser.add_argument("--gain", default=None, metavar="REF", help="gain reference (multiplied)")
    parser.add_argument("--dark", default=None, metavar="REF", help="dark reference (subtracted)")
    parser.add_argument(
        "--gain-rotate", type=int, default=0, metavar="N",
        help="rotate gain/dark by N x 90° counter-clockwise (default: 0)",
    )
    parser.add_argument(
        "--gain-flip", choices=("none", "x", "y"), default="none",
        help="flip gain/dark after rotating (default: none)",
    )
    parser.add_argument(
        "--output-pixel-size", type=float, default=None, metavar="Å",
        help="Fourier-crop to this pixel size (default: the movie's)",
    )
    parser.add_argument(
        "--mag-distortion", type=float, nargs=3, default=None,
        metavar=("ANGLE", "MAJOR", "MINOR"),
        help="correct anisotropic magnification (angle in degrees, two scales)",
    )
    parser.add_argument("--min-shift", type=float, default=2.0, metavar="Å", help="default: 2")
    parser.add_argument("--max-shift", type=float, default=40.0, metavar="Å", help="default: 40")
    parser.add_argument(
        "--bfactor", type=float, default=1500.0, metavar="Å²", help="default: 1500"
    )
    parser.add_argument(
        "--termination", type=float, default=1.0, metavar="Å",
        help="termination threshold (default: 1)",
    )
    parser.add_argument(
        "--iterations", type=int, default=10, metavar="N", help="maximum rounds (default: 10)"
    )
    parser.add_argument(
        "--no-exposure-filter", action="store_true", help="plain sum, no exposure weighting"
    )
    parser.add_argument(
        "--no-restore-power", action="store_true", help="do not restore the noise power"
    )
    parser.add_argument(
        "--no-mask-central-cross", action="store_true", help="do not mask the central cross"
    )
    parser.add_argument("--vertical-mask", type=int, default=1, metavar="PX", help="default: 1")
    parser.add_argument("--horizontal-mask", type=int, default=1, metavar="PX", help="default: 1")
    parser.add_argument(
        "--first-frame", type=int, default=1, metavar="N", help="first frame to sum (default: 1)"
    )
    parser.add_argument(
        "--last-frame", type=int, default=0, metavar="N",
        help="last frame to sum (default: 0 = the last)",
    )
    parser.add_argument(
        "--shifts-file", default=None, metavar="TXT", help="write x, y shifts (Å) per frame"
    )
    parser.add_argument(
        "--spectrum", default=None, metavar="MRC",
        help="write the amplitude spectrum (512²) of the unfiltered sum",
    )
    parser.add_argument(
        "--scaled-sum", default=None, metavar="MRC", help="write the sum binned to <= 512 px"
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="default: all cores"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Align the movie; 0 on success, 2 on bad input."""
    import os

    from cistemd.actions.align_movies import align_movie_file, unblur_parameters
    from cistemd.errors import InvalidInputError
    from cistemd.io.movie import GainTransform, read_movie_header

    try:
        pixel = args.pixel_size
        if pixel is None:
            pixel = read_movie_header(args.movie).pixel_size_angstroms
            if not pixel:
                raise InvalidInputError(
                    "the movie's header has no pixel size: give --pixel-size", path=args.movie
                )
        if pixel <= 0:
            raise InvalidInputError(f"--pixel-size must be positive, got {pixel}")
        binning = 1.0
        if args.output_pixel_size is not None:
            binning = args.output_pixel_size / pixel
            if binning < 1.0 - 1e-6:
                raise InvalidInputError(
                    f"--output-pixel-size {args.output_pixel_size} is smaller than the "
                    f"pixel size {pixel}; only binning (>= the pixel size) is supported"
                )
            binning = max(binning, 1.0)
        params = unblur_parameters(
            {
                "exposure_per_frame": args.exposure_per_frame,
                "voltage": args.voltage,
                "pre_exposure": args.pre_exposure,
                "min_shift": args.min_shift,
                "max_shift": args.max_shift,
                "bfactor": args.bfactor,
                "termination_threshold": args.termination,
                "max_iterations": args.iterations,
                "mask_central_cross": not args.no_mask_central_cross,
                "vertical_mask": args.vertical_mask,
                "horizontal_mask": args.horizontal_mask,
                "exposure_filter": not args.no_exposure_filter,
                "restore_power": not args.no_restore_power,
                "first_frame": args.first_frame,
                "last_frame": args.last_frame,
                "output_binning_factor": binning,
                "mag_distortion": args.mag_distortion,
            }
        )
        threads = args.threads or len(os.sched_getaffinity(0))
        summary = align_movie_file(
            args.movie,
            output=args.output,
            params=params,
            pixel_size_angstroms=pixel,
            gain=args.gain,
            dark=args.dark,
            gain_transform=GainTransform(args.gain_rotate, args.gain_flip),
            spectrum_output=args.spectrum,
            scaled_output=args.scaled_sum,
            shifts_output=args.shifts_file,
            threads=threads,
        )
    except (InvalidInputError, ValueError) as error:
        print(f"cistem unblur: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return 0
    shifts = list(zip(summary["shifts_x"], summary["shifts_y"], strict=True))
    print(
        f"aligned {summary['n_frames']} frames of {args.movie} in {summary['seconds']:.1f} s "
        f"-> {summary['output']} ({summary['x_size']}×{summary['y_size']} px, "
        f"{summary['output_pixel_size_angstroms']:.4g} Å/px)"
    )
    print("frame   x shift (Å)   y shift (Å)   (applied to the frame; middle frame = 0)")
    for index, (x, y) in enumerate(shifts, start=1):
        print(f"{index:5d} {x:13.2f} {y:13.2f}")
    return 0
