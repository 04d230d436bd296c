"""Merge partial reconstructions written by `cistem reconstruct3d --dump` (cisTEM's merge3d).

Adds the accumulated arrays of every dump file (same box, pixel size and
padding), then writes the SSNR-filtered map, optionally the half maps, and
the 7-column statistics file, as reconstruct3d does.

  cistem merge3d part_*.npz --output map.mrc --molecular-mass 480 --outer-mask 80 --json
"""

from __future__ import annotations

import argparse
import sys

NAME = "merge3d"
HELP = "merge reconstruct3d dump files into a map and statistics (cisTEM merge3d)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem merge3d`` arguments."""
    from cistemd.cli.commands.reconstruct3d import add_mask_arguments

    parser.add_argument("dumps", nargs="+", metavar="DUMP", help="dump files to add")
    parser.add_argument("--output", "-o", required=True, metavar="VOL.mrc", help="output map")
    parser.add_argument("--statistics", default=None, metavar="FILE",
                        help="statistics file (default: <VOL>_statistics.txt)")
    add_mask_arguments(parser)
    parser.add_argument("--half-maps", action="store_true", help="also write the half maps")
    parser.add_argument("--threads", type=int, default=1, help="FFT threads (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Merge and finalise; 0 on success, 2 on bad input."""
    from cistemd.actions import generate_3d as pipeline
    from cistemd.cli.commands.reconstruct3d import (
        default_statistics_path,
        half_map_paths,
        print_summary,
    )
    from cistemd.errors import InvalidInputError
    from cistemd.io.dump import read_dump

    try:
        merged, symmetry = read_dump(args.dumps[0])
        for path in args.dumps[1:]:
            other, other_symmetry = read_dump(path)
            if other_symmetry.upper() != symmetry.upper():
                raise InvalidInputError(
                    f"dump has symmetry {other_symmetry}, the first one {symmetry}", path=path
                )
            try:
                merged.merge(other)
            except ValueError as error:
                raise InvalidInputError(str(error), path=path) from None
        psize = merged.pixel_size_angstroms
        outer = args.outer_mask if args.outer_mask is not None else 100.0
        outer = min(outer, 0.5 * merged.box_size * psize)
        summary = pipeline.finalize(
            merged,
            output_path=args.output,
            statistics_path=args.statistics or default_statistics_path(args.output),
            half_map_paths=half_map_paths(args.output) if args.half_maps else None,
            molecular_mass_kda=args.molecular_mass,
            inner_mask_radius_angstroms=args.inner_mask,
            outer_mask_radius_angstroms=outer,
            threads=args.threads,
        )
    except (InvalidInputError, ValueError) as error:
        print(f"cistem merge3d: {error}", file=sys.stderr)
        return 2
    summary["n_dumps"] = len(args.dumps)
    summary["symmetry"] = symmetry
    print_summary(summary, args.json, "merge3d")
    return 0
