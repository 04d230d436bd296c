"""Reconstruct a 3-D map from particles with known poses (cisTEM's reconstruct3d).

Reads an MRC particle stack and its parameters (cisTEM .star or Frealign
.par: Euler angles ZYZ, shifts in Å, CTF, occupancy, sigma, score), inserts
every selected particle CTF-weighted by trilinear interpolation into two half
sets (ASSIGNED_SUBSET, else even/odd blocks), and writes the SSNR-filtered map,
optionally the half maps (VOL_map1.mrc, VOL_map2.mrc), and cisTEM's 7-column
statistics file (VOL_statistics.txt unless --statistics is given).

  cistem reconstruct3d particles.mrc particles.star --output map.mrc --pixel-size 1.5
  cistem reconstruct3d particles.mrc run.par --output map.mrc --symmetry O --half-maps --json
  cistem reconstruct3d particles.mrc run.star --first 1 --last 5000 --dump part_1.npz

With --dump the accumulated arrays are written instead of maps; combine dumps
with `cistem merge3d`. --json prints the FSC curve and the resolutions at
FSC 0.143 and 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "reconstruct3d"
HELP = "reconstruct a map from a particle stack and its poses (cisTEM reconstruct3d)"


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``merge3d``: mass and mask radii."""
    parser.add_argument(
        "--molecular-mass", type=float, default=1000.0, metavar="kDa",
        help="particle mass for the particle FSC (default: 1000, as cisTEM)",
    )
    parser.add_argument(
        "--inner-mask", type=float, default=0.0, metavar="Å", help="inner mask radius (default: 0)"
    )
    parser.add_argument(
        "--outer-mask", type=float, default=None, metavar="Å",
        help="outer mask radius (default: 100 Å, at most half the box)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem reconstruct3d`` arguments (defaults: cisTEM's, §1.3/§1.4)."""
    parser.add_argument("stack", metavar="STACK", help="MRC particle stack")
    parser.add_argument("parameters", metavar="PARAMS", help="cisTEM .star or Frealign .par")
    parser.add_argument("--output", "-o", default=None, metavar="VOL.mrc",
                        help="output map (required unless --dump)")
    parser.add_argument("--statistics", default=None, metavar="FILE",
                        help="statistics file (default: <VOL>_statistics.txt)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="Å",
                        help="default: the parameters' PixelSize column, else the stack header")
    parser.add_argument("--symmetry", default="C1", help="Cn, Dn, T, O or I (default: C1)")
    add_mask_arguments(parser)
    parser.add_argument("--score-weight", type=float, default=2.0, metavar="Å²",
                        help="score-to-weight B conversion (default: 2, as the GUI; 0 = off)")
    parser.add_argument("--adjust-scores", action=argparse.BooleanOptionalAction, default=True,
                        help="remove the score-vs-defocus trend (default: on)")
    parser.add_argument("--score-threshold", type=float, default=0.0, metavar="T",
                        help="0-1: keep the best fraction; >1: minimum score; 0 = all")
    parser.add_argument("--resolution-limit", type=float, default=0.0, metavar="Å",
                        help="insert data to this resolution only (default: 0 = Nyquist)")
    parser.add_argument("--crop", action="store_true",
                        help="crop the images to the outer mask (faster; map padded back)")
    parser.add_argument("--half-maps", action="store_true", help="also write the half maps")
    parser.add_argument("--dump", default=None, metavar="FILE",
                        help="write the accumulated arrays here instead of maps")
    parser.add_argument("--first", type=int, default=1, help="first particle (default: 1)")
    parser.add_argument("--last", type=int, default=0, help="last particle (default: 0 = all)")
    parser.add_argument("--padding", type=int, default=1, choices=(1, 2),
                        help="3-D Fourier oversampling (default: 1, as cisTEM)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="normalise images by the background outside the mask (default: on)")
    parser.add_argument("--invert", action="store_true", help="particles are white")
    parser.add_argument("--threads", type=int, default=1, help="FFT threads (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def default_statistics_path(output: str) -> str:
    """``map.mrc`` -> ``map_statistics.txt``."""
    import os

    stem, _ = os.path.splitext(output)
    return stem + "_statistics.txt"


def half_map_paths(output: str) -> tuple[str, str]:
    """``map.mrc`` -> (``map_map1.mrc``, ``map_map2.mrc``) as cisTEM's Generate 3D names them."""
    import os

    stem, ext = os.path.splitext(output)
    return stem + "_map1" + (ext or ".mrc"), stem + "_map2" + (ext or ".mrc")


def print_summary(summary: dict, as_json: bool, program: str) -> None:
    """Print a finalize() summary for people or as JSON."""
    if as_json:
        print(json.dumps(summary))
        return
    files = summary["files"]
    print(f"{program}: wrote {files['volume']}")
    for key in ("half_map_1", "half_map_2", "statistics"):
        if key in files:
            print(f"  {key}: {files[key]}")
    halves = summary["particles_per_half"]
    print(f"  particles per half set: {halves[0]} + {halves[1]}")
    r143, r05 = summary["resolution_0143"], summary["resolution_05"]
    print(f"  resolution: {r143:.2f} Å at FSC 0.143, {r05:.2f} Å at FSC 0.5"
          if r143 and r05 else "  resolution: undetermined")


def _pixel_size(args: argparse.Namespace, params: object) -> float:
    import numpy as np

    from cistemd.errors import InvalidInputError
    from cistemd.io import mrc

    if args.pixel_size is not None:
        if not args.pixel_size > 0:
            raise InvalidInputError("--pixel-size must be positive")
        return float(args.pixel_size)
    columns = getattr(params, "columns", {})
    if "pixel_size" in columns and np.all(columns["pixel_size"] > 0):
        return float(np.median(columns["pixel_size"]))
    voxel = float(mrc.read_header(args.stack).voxel_size_angstroms[0])
    if voxel > 0:
        return voxel
    raise InvalidInputError(
        "no pixel size: give --pixel-size (the parameters have no PixelSize column and the "
        "stack header has none)",
        path=args.stack,
    )


def run(args: argparse.Namespace) -> int:
    """Reconstruct; 0 on success, 2 on bad input."""
    from cistemd.actions import generate_3d as pipeline
    from cistemd.errors import InvalidInputError
    from cistemd.io import mrc
    from cistemd.io.dump import write_dump
    from cistemd.kernels.reconstruct import Reconstruction

    try:
        if args.output is None and args.dump is None:
            raise InvalidInputError("give --output VOL.mrc (or --dump FILE)")
        params = pipeline.read_parameters(args.parameters)
        psize = _pixel_size(args, params)
        header = mrc.read_header(args.stack)
        box = int(header.nx)
        outer = args.outer_mask if args.outer_mask is not None else 100.0
        outer = min(outer, 0.5 * box * psize)
        selection = pipeline.selection_statistics(
            params,
            score_threshold=args.score_threshold,
            adjust_scores=args.adjust_scores,
        )
        recon_box = pipeline.crop_box(box, psize, outer) if args.crop else box
        rec = Reconstruction.empty(recon_box, psize, padding=args.padding)
        count = pipeline.insert_particles(
            rec,
            args.stack,
            params,
            selection,
            positions=(args.first, args.last if args.last > 0 else 2**62),
            pixel_size_angstroms=psize,
            symmetry=args.symmetry,
            score_weight_conversion=args.score_weight,
            resolution_limit_angstroms=args.resolution_limit,
            normalize_radius_angstroms=outer if args.normalize else 0.0,
            invert=args.invert,
            threads=args.threads,
        )
        if args.dump is not None:
            write_dump(args.dump, rec, symmetry=args.symmetry)
            if args.output is None:
                dumped = {"dump": args.dump, "n_particles": count,
                          "particles_per_half": [int(c) for c in rec.particle_counts]}
                if args.json:
                    print(json.dumps(dumped))
                else:
                    print(f"reconstruct3d: inserted {count} particles into {args.dump}")
                return 0
        summary = pipeline.finalize(
            rec,
            output_path=args.output,
            statistics_path=args.statistics or default_statistics_path(args.output),
            half_map_paths=half_map_paths(args.output) if args.half_maps else None,
            molecular_mass_kda=args.molecular_mass,
            inner_mask_radius_angstroms=args.inner_mask,
            outer_mask_radius_angstroms=outer,
            output_box=box,
            threads=args.threads,
        )
    except (InvalidInputError, ValueError) as error:
        print(f"cistem reconstruct3d: {error}", file=sys.stderr)
        return 2
    summary["n_particles"] = count
    if args.dump is not None:
        summary["dump"] = args.dump
    print_summary(summary, args.json, "reconstruct3d")
    return 0
