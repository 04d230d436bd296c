"""Import assets into a project through cistemd (the options of cisTEM's import dialogs).

  cistem import movies FILE... --pixel-size A --exposure-per-frame E
                       [--voltage 300] [--cs 2.7] [--gain FILE] [--dark FILE]
                       [--desired-pixel-size A] [--mag-distortion-angle DEG
                       --mag-distortion-major S --mag-distortion-minor S]
                       [--protein-is-white] [--eer-super-res-factor N]
                       [--eer-frames-per-image N]
  cistem import images FILE... --pixel-size A [--voltage 300] [--cs 2.7]
                       [--protein-is-white]
  cistem import positions FILE          text: image (id or file name), x, y in Å
  cistem import volumes FILE... [--pixel-size A]   (default: from the MRC header)
  cistem import refinement-package --stack FILE --parameters FILE
                       [--name NAME] [--pixel-size A] [--symmetry C1]
                       [--molecular-weight 400] [--largest-dimension 150]
                       [--amplitude-contrast 0.07] [--voltage 300] [--cs 2.7]
                       [--protein-is-white] [--format par|star|relion]

Every sub-command takes ``--project PATH`` (default: the project the current
directory is in) and ``--json`` (prints ``{"kind", "ids", "count",
"warnings"}``). Files are referenced where they are, as cisTEM does. Voltage
and Cs default to cisTEM's 300 kV and 2.7 mm; the pixel size and exposure
have no safe default and must be given. Giving any magnification-distortion
value turns the correction on. Gain references are used as they are on disk
(no rotation or flip option yet).

Movies are sent to the daemon in batches of ``--batch`` (default 500) files;
each batch is one transaction -- a file that cannot be read refuses its
batch, names the file on one line and exits 2; earlier batches stay imported.
Reading headers takes ~0.1 ms per file, so a batch holds the daemon for well
under a second and other clients are answered in between.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "import"
HELP = "import movies, images, positions, volumes or a refinement package"

_KINDS = {
    "movies": "movies",
    "images": "images",
    "positions": "positions",
    "volumes": "volumes",
    "refinement-package": "refinement_package",
}


def _microscope(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    parser.add_argument(
        "--voltage",
        type=float,
        default=300.0 if defaults else None,
        help="accelerating voltage, kV" + (" (default 300)" if defaults else ""),
    )
    parser.add_argument(
        "--cs",
        type=float,
        default=2.7 if defaults else None,
        help="spherical aberration, mm" + (" (default 2.7)" if defaults else ""),
    )
    parser.add_argument(
        "--protein-is-white", action="store_true", help="protein is bright in the images"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem import`` sub-commands."""
    sub = parser.add_subparsers(dest="import_kind", metavar="KIND", required=True)

    movies = sub.add_parser("movies", help="import movies (MRC, TIFF, EER)")
    movies.add_argument("files", nargs="+", metavar="FILE")
    movies.add_argument("--pixel-size", type=float, required=True, help="pixel size, Å")
    movies.add_argument(
        "--exposure-per-frame", type=float, required=True, help="exposure per frame, e⁻/Å²"
    )
    _microscope(movies)
    movies.add_argument("--gain", help="gain reference (MRC or TIFF)")
    movies.add_argument("--dark", help="dark reference (MRC or TIFF)")
    movies.add_argument(
        "--desired-pixel-size", type=float, help="output pixel size after Fourier cropping, Å"
    )
    movies.add_argument("--mag-distortion-angle", type=float, help="major axis angle, degrees")
    movies.add_argument("--mag-distortion-major", type=float, help="major scale factor")
    movies.add_argument("--mag-distortion-minor", type=float, help="minor scale factor")
    movies.add_argument("--eer-super-res-factor", type=int, help="EER super-resolution factor")
    movies.add_argument("--eer-frames-per-image", type=int, help="EER frames per image")
    movies.add_argument("--batch", type=int, default=500, help="files per request (≤ 500)")
    add_common(movies)

    images = sub.add_parser("images", help="import micrographs (2-D MRC or TIFF)")
    images.add_argument("files", nargs="+", metavar="FILE")
    images.add_argument("--pixel-size", type=float, required=True, help="pixel size, Å")
    _microscope(images)
    images.add_argument("--batch", type=int, default=500, help="files per request (≤ 500)")
    add_common(images)

    positions = sub.add_parser("positions", help="import particle positions from a text file")
    positions.add_argument("files", nargs=1, metavar="FILE")
    add_common(positions)

    volumes = sub.add_parser("volumes", help="import 3-D maps (MRC)")
    volumes.add_argument("files", nargs="+", metavar="FILE")
    volumes.add_argument(
        "--pixel-size", type=float, help="pixel size, Å (default: from the header)"
    )
    volumes.add_argument("--batch", type=int, default=500, help="files per request (≤ 500)")
    add_common(volumes)

    package = sub.add_parser(
        "refinement-package", help="import a particle stack with .par/.star parameters"
    )
    package.add_argument("--stack", required=True, help="particle stack (MRC)")
    package.add_argument(
        "--parameters", required=True, help="parameters: Frealign .par, cisTEM or RELION .star"
    )
    package.add_argument("--name", help="package name (default: from the stack's name)")
    package.add_argument("--pixel-size", type=float, help="pixel size, Å (default: from files)")
    package.add_argument("--symmetry", default="C1", help="symmetry (default C1)")
    package.add_argument("--molecular-weight", type=float, default=400.0, help="kDa (default 400)")
    package.add_argument("--largest-dimension", type=float, default=150.0, help="Å (default 150)")
    package.add_argument(
        "--amplitude-contrast", type=float, help="amplitude contrast (default: file, else 0.07)"
    )
    _microscope(package, defaults=False)
    package.add_argument("--format", dest="parameters_format", help="par, star or relion")
    add_common(package)


def options_of(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Return the files and the import options (Project API names) of parsed arguments."""
    kind = args.import_kind
    if kind == "refinement-package":
        files = [args.stack, args.parameters]
        options = {
            "name": args.name,
            "pixel_size_angstroms": args.pixel_size,
            "symmetry": args.symmetry,
            "molecular_weight_kda": args.molecular_weight,
            "largest_dimension_angstroms": args.largest_dimension,
            "amplitude_contrast": args.amplitude_contrast,
            "voltage_kv": args.voltage,
            "spherical_aberration_mm": args.cs,
            "protein_is_white": args.protein_is_white,
            "parameters_format": args.parameters_format,
        }
        return files, options
    files = list(args.files)
    if kind == "positions":
        return files, {}
    if kind == "volumes":
        return files, {"pixel_size_angstroms": args.pixel_size}
    options = {
        "voltage_kv": args.voltage,
        "spherical_aberration_mm": args.cs,
        "pixel_size_angstroms": args.pixel_size,
        "protein_is_white": args.protein_is_white,
    }
    if kind == "movies":
        distortion = (
            args.mag_distortion_angle,
            args.mag_distortion_major,
            args.mag_distortion_minor,
        )
        options.update(
            {
                "exposure_per_frame": args.exposure_per_frame,
                "gain_filename": args.gain,
                "dark_filename": args.dark,
                "desired_pixel_size_angstroms": args.desired_pixel_size,
                "eer_super_res_factor": args.eer_super_res_factor,
                "eer_frames_per_image": args.eer_frames_per_image,
            }
        )
        if any(value is not None for value in distortion):
            options.update(
                {
                    "correct_mag_distortion": True,
                    "mag_distortion_angle": distortion[0] or 0.0,
                    "mag_distortion_major_scale": distortion[1] or 1.0,
                    "mag_distortion_minor_scale": distortion[2] or 1.0,
                }
            )
    return files, options


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem import KIND``."""
    project = project_path(args.project)
    kind = _KINDS[args.import_kind]
    files, options = options_of(args)
    batch = int(getattr(args, "batch", 500))

    def body(client: Any) -> int:
        reply = client.import_assets(project, kind, files, batch=batch, **options)
        if args.json:
            print(json.dumps(reply))
            return 0
        noun = "particle positions" if kind == "positions" else args.import_kind
        ids = reply["ids"]
        where = f" (ids {ids[0]}–{ids[-1]})" if len(ids) > 1 else f" (id {ids[0]})" if ids else ""
        print(f"imported {reply['count']} {noun}{where} into {project}")
        for warning in reply["warnings"]:
            print(f"warning: {warning}")
        return 0

    return with_client(f"import {args.import_kind}", body)
