"""Simulate a cryo-EM data set with known ground truth.

Writes movies (LZW TIFF or MRC) or motion-free micrographs of particles in
amorphous ice -- CTF with known defocus, astigmatism and phase shift, beam-
induced drift, radiation damage, Poisson shot noise, optionally a detector
gain -- plus the particle's 3-D map (reference_map.mrc), the gain reference
and truth.json, which holds every parameter: per micrograph the CTF, the
per-frame shifts and each particle's position (Å) and Euler angles.

  cistem simulate demo_data --structure apoferritin --micrographs 4
  cistem simulate small --size 512 --particles 20 --format mrc --json

The structure is the built-in apoferritin-like 24-mer, an asymmetric
protein-like chain, or a PDB/mmCIF file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "simulate"
HELP = "simulate movies/micrographs with known ground truth (truth.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem simulate`` arguments (defaults = :class:`SimulationSpec`'s)."""
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="directory to write into")
    parser.add_argument(
        "--structure",
        default="apoferritin",
        metavar="apoferritin|asymmetric|PATH",
        help="built-in structure or a PDB/mmCIF file (default: apoferritin)",
    )
    parser.add_argument("--micrographs", type=int, default=4, metavar="N", help="default: 4")
    parser.add_argument(
        "--size", type=int, default=1024, metavar="PX", help="square image edge (default: 1024)"
    )
    parser.add_argument("--pixel-size", type=float, default=1.0, metavar="Å", help="default: 1.0")
    parser.add_argument("--voltage", type=float, default=300.0, metavar="kV", help="default: 300")
    parser.add_argument("--cs", type=float, default=2.7, metavar="mm", help="default: 2.7")
    parser.add_argument(
        "--amplitude-contrast", type=float, default=0.07, metavar="AC", help="default: 0.07"
    )
    parser.add_argument(
        "--defocus-min", type=float, default=8000.0, metavar="Å", help="default: 8000"
    )
    parser.add_argument(
        "--defocus-max", type=float, default=20000.0, metavar="Å", help="default: 20000"
    )
    parser.add_argument(
        "--astigmatism", type=float, default=400.0, metavar="Å", help="df1 - df2 (default: 400)"
    )
    parser.add_argument(
        "--phase-shift", type=float, default=0.0, metavar="deg", help="phase plate (default: 0)"
    )
    parser.add_argument(
        "--particles", type=int, default=50, metavar="N", help="per micrograph (default: 50)"
    )
    parser.add_argument(
        "--min-separation",
        type=float,
        default=None,
        metavar="Å",
        help="between particle centres (default: the particle diameter)",
    )
    parser.add_argument("--frames", type=int, default=16, metavar="N", help="default: 16")
    parser.add_argument(
        "--exposure-per-frame", type=float, default=2.5, metavar="e/Å²", help="default: 2.5"
    )
    parser.add_argument(
        "--pre-exposure", type=float, default=0.0, metavar="e/Å²", help="default: 0"
    )
    parser.add_argument(
        "--drift", type=float, default=10.0, metavar="Å", help="drift path per movie (default: 10)"
    )
    parser.add_argument(
        "--ice-thickness", type=float, default=300.0, metavar="Å", help="0 = vacuum (default: 300)"
    )
    parser.add_argument(
        "--envelope-b", type=float, default=40.0, metavar="Å²", help="CTF envelope (default: 40)"
    )
    parser.add_argument(
        "--b-factor", type=float, default=20.0, metavar="Å²", help="atomic B (default: 20)"
    )
    parser.add_argument(
        "--radiation-damage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="attenuate the signal with accumulated exposure (default: on)",
    )
    parser.add_argument(
        "--gain-reference",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="apply a detector sensitivity and write gain_reference.mrc (default: off)",
    )
    parser.add_argument(
        "--format",
        choices=("tiff", "mrc", "micrograph"),
        default="tiff",
        help="LZW TIFF movies, MRC movies, or motion-free MRC micrographs (default: tiff)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="default: 0")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _summary(output_dir: str, truth: dict[str, Any]) -> dict[str, Any]:
    import os

    micrographs = truth["micrographs"]
    return {
        "output_dir": os.path.abspath(output_dir),
        "truth_file": os.path.join(os.path.abspath(output_dir), "truth.json"),
        "version": truth["version"],
        "structure": truth["structure"]["name"],
        "n_micrographs": len(micrographs),
        "n_particles": truth["n_particles"],
        "pixel_size_angstroms": truth["pixel_size_angstroms"],
        "reference_map": truth["reference_map"]["filename"],
        "gain_reference": (truth["gain_reference"] or {}).get("filename"),
        "files": [
            {
                "filename": m["filename"],
                "n_particles": m["n_particles"],
                "defocus_1_angstroms": m["ctf"]["defocus_1_angstroms"],
                "defocus_2_angstroms": m["ctf"]["defocus_2_angstroms"],
                "astigmatism_angle_degrees": m["ctf"]["astigmatism_angle_degrees"],
            }
            for m in micrographs
        ],
    }


def run(args: argparse.Namespace) -> int:
    """Simulate the data set; print a summary; 0 on success, 2 on bad input."""
    from cistemd.actions.simulate import SimulationSpec, simulate_dataset
    from cistemd.errors import InvalidInputError

    try:
        spec = SimulationSpec(
            structure=args.structure,
            n_micrographs=args.micrographs,
            size_px=args.size,
            pixel_size_angstroms=args.pixel_size,
            voltage_kv=args.voltage,
            spherical_aberration_mm=args.cs,
            amplitude_contrast=args.amplitude_contrast,
            defocus_min_angstroms=args.defocus_min,
            defocus_max_angstroms=args.defocus_max,
            astigmatism_angstroms=args.astigmatism,
            phase_shift_degrees=args.phase_shift,
            particles_per_micrograph=args.particles,
            min_separation_angstroms=args.min_separation,
            output_format=args.format,
            n_frames=args.frames,
            exposure_per_frame_e_per_a2=args.exposure_per_frame,
            pre_exposure_e_per_a2=args.pre_exposure,
            drift_angstroms=args.drift,
            ice_thickness_angstroms=args.ice_thickness,
            envelope_b_factor_angstroms2=args.envelope_b,
            specimen_b_factor_angstroms2=args.b_factor,
            radiation_damage=args.radiation_damage,
            gain_reference=args.gain_reference,
            seed=args.seed,
        )
        truth = simulate_dataset(args.output_dir, spec)
    except (InvalidInputError, ValueError) as error:
        print(f"cistem simulate: {error}", file=sys.stderr)
        return 2
    summary = _summary(args.output_dir, truth)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"simulated {summary['n_micrographs']} "
        f"{spec.output_format.upper() + ' movie(s)' if spec.is_movie else 'MRC micrograph(s)'} "
        f"of {summary['structure']} "
        f"({summary['n_particles']} particles, {spec.pixel_size_angstroms:g} Å/px) "
        f"in {summary['output_dir']}"
    )
    for entry in summary["files"]:
        print(
            f"  {entry['filename']}: {entry['n_particles']} particles, defocus "
            f"{entry['defocus_1_angstroms']:.0f}/{entry['defocus_2_angstroms']:.0f} Å "
            f"at {entry['astigmatism_angle_degrees']:.1f}°"
        )
    print(f"  truth: {summary['truth_file']}")
    return 0
