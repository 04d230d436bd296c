"""Sharpen a 3-D map, like cisTEM's sharpen_map program.

Applies a B-factor up to the flattening resolution, whitens (flattens) the
amplitude spectrum beyond it with an optional second B-factor, weights by
the figure of merit SSNR/(1+SSNR) from a cisTEM statistics file, cuts off at
a resolution with a cosine edge, and optionally inverts the hand and corrects
the gridding attenuation. The spectrum is measured on a masked copy: a
spherical shell (inner/outer radius, 10 Å edge), an auto-mask, or a mask file.

  cistem sharpen-map volume.mrc --output sharp.mrc --pre-b -90 --resolution-limit 3.2
  cistem sharpen-map map.mrc -o sharp.mrc --statistics stats.txt --resolution-limit 0 --json

Defaults are those of the sharpen_map program (flatten from 8 Å, cut-off
3 Å, B 0/0, edge 20 Å, outer radius 100 Å, no auto-mask, no gridding
correction); cisTEM's Sharpen 3D panel (the `sharpen_map` action) uses
flatten 12 Å, B −90 Å², auto-mask and gridding correction. A cut-off of 0
means the FSC = 0.143 resolution of the statistics (or none without them).
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "sharpen-map"
HELP = "sharpen a 3-D map: B-factors, spectral flattening, FOM weighting, cut-off"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem sharpen-map`` arguments (defaults: cisTEM's sharpen_map program)."""
    parser.add_argument("volume", metavar="VOL", help="input map (MRC, cubic)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="output map (MRC)")
    parser.add_argument(
        "--pixel-size", type=float, default=None, metavar="Å", help="default: from the header"
    )
    parser.add_argument(
        "--statistics",
        default=None,
        metavar="FILE",
        help="cisTEM statistics file: FOM weighting (and the cut-off when it is 0)",
    )
    parser.add_argument(
        "--use-statistics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply FOM weighting when --statistics is given (default: yes)",
    )
    parser.add_argument(
        "--ssnr-scale", type=float, default=1.0, metavar="X", help="SSNR scale, 0.1-10 (1.0)"
    )
    parser.add_argument(
        "--inner-mask-radius", type=float, default=0.0, metavar="Å", help="default: 0"
    )
    parser.add_argument(
        "--outer-mask-radius", type=float, default=100.0, metavar="Å", help="default: 100"
    )
    parser.add_argument(
        "--pre-b",
        "--low-b",
        dest="pre_b",
        type=float,
        default=0.0,
        metavar="Å²",
        help="B-factor up to the flattening resolution (default: 0; GUI -90)",
    )
    parser.add_argument(
        "--post-b",
        "--high-b",
        dest="post_b",
        type=float,
        default=0.0,
        metavar="Å²",
        help="B-factor beyond the flattening resolution (default: 0)",
    )
    parser.add_argument(
        "--flatten-from",
        type=float,
        default=8.0,
        metavar="Å",
        help="whiten beyond this resolution (default: 8; GUI 12)",
    )
    parser.add_argument(
        "--resolution-limit",
        type=float,
        default=3.0,
        metavar="Å",
        help="cut-off (default: 3; 0 = FSC 0.143 from --statistics)",
    )
    parser.add_argument(
        "--filter-edge", type=float, default=20.0, metavar="Å", help="cut-off edge 1/w (20)"
    )
    parser.add_argument("--mask", default=None, metavar="FILE", help="3-D mask (MRC, same box)")
    parser.add_argument(
        "--mask-edge",
        type=float,
        default=0.0,
        metavar="Å",
        help="binarise --mask and add a cosine edge this wide (default 0: use it as is)",
    )
    parser.add_argument(
        "--auto-mask",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="auto-mask the density for the spectrum (default: no; GUI yes)",
    )
    parser.add_argument(
        "--invert-hand",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="invert the handedness (default: no)",
    )
    parser.add_argument(
        "--correct-gridding",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="divide out the sinc² gridding attenuation (default: no; GUI yes)",
    )
    parser.add_argument(
        "--orth-view", default=None, metavar="FILE", help="also write orthogonal views (MRC)"
    )
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="FFT threads (1)")
    parser.add_argument(
        "--json", action="store_true", help="print the result (with spectra) as one JSON object"
    )


def run(args: argparse.Namespace) -> int:
    """Sharpen the map; 0 on success, 2 on bad input."""
    from cistemd.actions.sharpen_map import sharpen_volume_file
    from cistemd.errors import InvalidInputError

    try:
        if not 0.1 <= args.ssnr_scale <= 10.0:
            raise InvalidInputError(f"--ssnr-scale must be in 0.1-10, got {args.ssnr_scale}")
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
        if args.mask_edge < 0:
            raise InvalidInputError(f"--mask-edge must be >= 0, got {args.mask_edge}")
        if args.resolution_limit < 0:
            raise InvalidInputError(
                f"--resolution-limit must be >= 0 (0 = from the statistics), "
                f"got {args.resolution_limit}"
            )
        statistics = None
        if args.statistics:
            from cistemd.io.statistics import read_statistics

            statistics = read_statistics(args.statistics)
        summary = sharpen_volume_file(
            args.volume,
            args.output,
            pixel_size_angstroms=args.pixel_size,
            resolution_limit_angstroms=args.resolution_limit,
            default_resolution_limit_angstroms=None,
            flatten_from_resolution_angstroms=args.flatten_from,
            pre_cutoff_b_factor_angstroms2=args.pre_b,
            post_cutoff_b_factor_angstroms2=args.post_b,
            filter_edge_angstroms=args.filter_edge,
            statistics=statistics,
            use_fom_weighting=args.use_statistics,
            ssnr_scale=args.ssnr_scale,
            inner_mask_radius_angstroms=args.inner_mask_radius,
            outer_mask_radius_angstroms=args.outer_mask_radius,
            auto_mask=args.auto_mask,
            mask_path=args.mask,
            mask_edge_angstroms=args.mask_edge,
            invert_hand=args.invert_hand,
            correct_gridding=args.correct_gridding,
            orth_view_path=args.orth_view,
            threads=args.threads,
        )
    except (InvalidInputError, ValueError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"cistem sharpen-map: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return 0
    limit = summary["resolution_limit_angstroms"]
    print(
        f"sharpened {summary['input']} -> {summary['output']} "
        f"({summary['box_size']}³ voxels, {summary['pixel_size_angstroms']:g} Å/voxel)"
    )
    print(
        f"  cut-off {'Nyquist' if limit is None else f'{limit:.2f} Å'}, "
        f"mask {summary['mask']}, FOM weighting {'on' if summary['fom_weighting'] else 'off'}, "
        f"{summary['seconds']:.2f} s"
    )
    if summary["orth_view"]:
        print(f"  orthogonal views: {summary['orth_view']}")
    return 0
