r"""Project a 3-D map at given poses, optionally with CTF and noise (a particle stack).

Poses come from a cisTEM .star or Frealign .par file (angles ZYZ in degrees,
shifts in Å, defocus/astigmatism/phase shift, voltage, Cs, amplitude contrast)
or are drawn uniformly at random (--random N). Projections are central
slices of the map's padded 3-D transform (trilinear interpolation), each with
its CTF when the parameters give a defocus (or --defocus is set).

  cistem project3d map.mrc --angles particles.star --output stack.mrc
  cistem project3d map.mrc --random 1000 --defocus 15000 --snr 0.1 --output sim.mrc \\
      --write-parameters sim.star --json

With --write-parameters the poses used (random ones included) are written as a
cisTEM .star file, so the stack can go straight into `cistem reconstruct3d`.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "project3d"
HELP = "project a map at given poses (with optional CTF and noise) into a stack"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem project3d`` arguments."""
    parser.add_argument("volume", metavar="VOL", help="MRC map (cube)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--angles", metavar="PARAMS", help="cisTEM .star or Frealign .par")
    source.add_argument("--random", type=int, metavar="N", help="N uniformly random poses")
    parser.add_argument("--output", "-o", required=True, metavar="STACK.mrc", help="output stack")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="Å",
                        help="default: the map header's voxel size")
    parser.add_argument("--defocus", type=float, default=None, metavar="Å",
                        help="defocus for --random poses, or to override (default: no CTF)")
    parser.add_argument("--voltage", type=float, default=300.0, metavar="kV")
    parser.add_argument("--cs", type=float, default=2.7, metavar="mm")
    parser.add_argument("--amplitude-contrast", type=float, default=0.07)
    parser.add_argument("--ctf", action=argparse.BooleanOptionalAction, default=True,
                        help="apply the CTF when a defocus is known (default: on)")
    parser.add_argument("--snr", type=float, default=0.0,
                        help="add white Gaussian noise at this SNR (variance ratio; 0 = none)")
    parser.add_argument("--padding", type=int, default=2, help="3-D oversampling (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--write-parameters", default=None, metavar="FILE.star",
                        help="write the poses and CTF used as a cisTEM .star file")
    parser.add_argument("--threads", type=int, default=1, help="FFT threads (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Project; 0 on success, 2 on bad input."""
    import numpy as np

    from cistemd.actions.generate_3d import read_parameters
    from cistemd.errors import InvalidInputError
    from cistemd.io import cistem_star, mrc
    from cistemd.io.parameters import ParticleParameters
    from cistemd.kernels import projection
    from cistemd.kernels.ctf import CTFParams
    from cistemd.kernels.rotation import random_orientations

    try:
        volume = np.asarray(mrc.read(args.volume), dtype=np.float32)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise InvalidInputError(f"the map must be a cube, got {volume.shape}",
                                    path=args.volume)
        psize = args.pixel_size or float(mrc.read_header(args.volume).voxel_size_angstroms[0])
        if not psize > 0:
            raise InvalidInputError("no pixel size in the header: give --pixel-size",
                                    path=args.volume)
        rng = np.random.default_rng(args.seed)
        if args.angles is not None:
            params = read_parameters(args.angles)
        else:
            if args.random < 1:
                raise InvalidInputError("--random must be at least 1")
            angles = random_orientations(args.random, rng)
            params = ParticleParameters.with_defaults(args.random)
            params.set("phi", angles[:, 0])
            params.set("theta", angles[:, 1])
            params.set("psi", angles[:, 2])
            params.set("pixel_size", psize)
            params.set("microscope_voltage_kv", args.voltage)
            params.set("microscope_spherical_aberration_mm", args.cs)
            params.set("amplitude_contrast", args.amplitude_contrast)
        if args.defocus is not None:
            params.set("defocus_1", args.defocus)
            params.set("defocus_2", args.defocus)
        m = len(params)
        if m == 0:
            raise InvalidInputError("no particles to project", path=args.angles)
        use_ctf = args.ctf and bool(np.any(params.get("defocus_1") != 0))
        ctfs = None
        if use_ctf:
            ctfs = [
                CTFParams(
                    defocus_1_angstroms=float(params.get("defocus_1")[i]),
                    defocus_2_angstroms=float(params.get("defocus_2")[i]),
                    astigmatism_angle_degrees=float(params.get("defocus_angle")[i]),
                    voltage_kv=float(params.get("microscope_voltage_kv")[i]),
                    spherical_aberration_mm=float(params.get("microscope_spherical_aberration_mm")[i]),
                    amplitude_contrast=float(params.get("amplitude_contrast")[i]),
                    additional_phase_shift_radians=float(np.deg2rad(params.get("phase_shift")[i])),
                )
                for i in range(m)
            ]
        projector = projection.prepare_projector(volume, padding=args.padding,
                                                 workers=args.threads)
        euler = np.stack([params.get("phi"), params.get("theta"), params.get("psi")], axis=1)
        shifts = np.stack([params.get("x_shift"), params.get("y_shift")], axis=1)
        n = volume.shape[0]
        stack = np.empty((m, n, n), dtype=np.float32)
        for begin in range(0, m, 500):
            part = slice(begin, begin + 500)
            stack[part] = projection.project(
                projector, euler[part], shifts_angstroms=shifts[part], pixel_size_angstroms=psize,
                ctf=None if ctfs is None else ctfs[part], workers=args.threads,
            )
        noise_sigma = 0.0
        if args.snr > 0:
            noise_sigma = float(np.sqrt(stack.var() / args.snr))
            stack += rng.normal(0.0, noise_sigma, stack.shape).astype(np.float32)
        mrc.write(args.output, stack, voxel_size_angstroms=psize, kind="stack")
        if args.write_parameters:
            if "position_in_stack" not in params.columns:
                params.set("position_in_stack", np.arange(1, m + 1))
            cistem_star.write(args.write_parameters, params)
    except (InvalidInputError, ValueError) as error:
        print(f"cistem project3d: {error}", file=sys.stderr)
        return 2
    summary = {
        "output": args.output,
        "n_projections": m,
        "box_size": n,
        "pixel_size_angstroms": psize,
        "ctf": use_ctf,
        "noise_sigma": noise_sigma,
        "parameters": args.write_parameters,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"project3d: wrote {m} projections ({n}x{n}, {psize:g} Å/px) to {args.output}")
    return 0
