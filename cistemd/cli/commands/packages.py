"""Create and list refinement packages through cistemd (cisTEM's "New Refinement Package").

  cistem packages list                         packages (id, name, particles, box, symmetry)
  cistem packages create [--positions-group ID] [--box-size PX] [--symmetry C1]
                         [--molecular-weight kDa] [--largest-dimension Å] [--classes N]
                         [--name NAME] [--seed N]
        box every particle position (group 0 = all) out of its image into
        Assets/ParticleStacks/particle_stack_<id>.mrc, with per-particle CTF from
        the image's active estimate and random initial angles; --box-size 0 (the
        default) takes 2.2 × the largest dimension, as cisTEM
  cistem packages from-package PARENT_ID [--refinement ID] [--classes N]
                         [--keep-classes 1,3] [--class-sources 1+2,3]
                         [--assignment best_occupancy|random] [--randomise-occupancies]
                         [--symmetry ..] [--molecular-weight ..] [--largest-dimension ..]
        a new package from an existing one without re-extracting: all its
        particles (sharing the stack), or those whose best class is kept; each
        new class takes one old class's parameters or merges several

create and from-package submit a ``create_refinement_package`` job (the same
as ``cistem run create_refinement_package ...``) and wait for it unless
``--no-wait``. Every sub-command takes ``--project PATH``, ``--profile NAME``
(create/from-package) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cistemd.cli.commands._daemon import add_common, project_path, with_client

NAME = "packages"
HELP = "create and list refinement packages"


def _package_options(parser: argparse.ArgumentParser, *, inherit: bool) -> None:
    default = None if inherit else "C1"
    parser.add_argument("--symmetry", default=default, metavar="SYM",
                        help="C<n>, D<n>, T, O or I" + (" (default: the parent's)" if inherit
                                                       else " (default: C1)"))
    parser.add_argument("--molecular-weight", type=float, default=None if inherit else 300.0,
                        metavar="kDa")
    parser.add_argument("--largest-dimension", type=float,
                        default=None if inherit else 150.0, metavar="Å")
    parser.add_argument("--classes", type=int, default=1, metavar="N",
                        help="number of classes (default: 1)")
    parser.add_argument("--name", default="", help="default: Refinement Package #<id>")
    parser.add_argument("--seed", type=int, default=-1, metavar="N",
                        help="seed of the random initial parameters (default: random)")
    parser.add_argument("--profile", default="", help="run profile (default: local)")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="how long to wait (default: 3600)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``cistem packages`` sub-commands."""
    sub = parser.add_subparsers(dest="packages_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="list refinement packages")
    create = sub.add_parser("create", help="box particle positions into a new package")
    create.add_argument("--positions-group", type=int, default=0, metavar="ID",
                        help="particle position group (default: 0 = all)")
    create.add_argument("--box-size", type=int, default=0, metavar="PX",
                        help="0 = 2.2 × largest dimension (default)")
    _package_options(create, inherit=False)
    parent = sub.add_parser("from-package", help="a new package from an existing one")
    parent.add_argument("parent_id", type=int, metavar="PARENT_ID")
    parent.add_argument("--refinement", type=int, default=0, metavar="ID",
                        help="the parent's refinement to start from (default: its last)")
    parent.add_argument("--keep-classes", default="", metavar="LIST",
                        help="keep only particles whose best class is listed, e.g. 1,3")
    parent.add_argument("--class-sources", default="", metavar="SPEC",
                        help="old classes per new class, e.g. 1+2,3 (merge 1 and 2)")
    parent.add_argument("--assignment", choices=("best_occupancy", "random"),
                        default="best_occupancy")
    parent.add_argument("--randomise-occupancies", action="store_true")
    _package_options(parent, inherit=True)
    for command in sub.choices.values():
        add_common(command)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "number_of_classes": args.classes,
        "name": args.name,
        "seed": args.seed,
    }
    for option, name in (("symmetry", "symmetry"), ("molecular_weight", "molecular_weight"),
                         ("largest_dimension", "largest_dimension")):
        value = getattr(args, option)
        if value is not None:
            params[name] = value
    if args.packages_command == "create":
        params.update(source="positions", particle_position_group=args.positions_group,
                      box_size=args.box_size)
    else:
        params.update(
            source="package", parent_package=args.parent_id,
            parent_refinement=args.refinement,
            carry_over_all_particles=not args.keep_classes,
            selected_classes=args.keep_classes, class_sources=args.class_sources,
            assignment=args.assignment, randomise_occupancies=args.randomise_occupancies,
        )
    return params


def run(args: argparse.Namespace) -> int:
    """Execute ``cistem packages …``."""
    project = project_path(args.project)
    command = args.packages_command

    def body(client: Any) -> int:
        if command == "list":
            rows, total = client.assets(project, "packages")
            if args.json:
                print(json.dumps({"packages": rows, "total": total}))
                return 0
            print(f"{'ID':>4} {'BOX':>5} {'PX (Å)':>7} {'SYM':>4} {'CLASSES':>7}  NAME")
            for row in rows:
                print(f"{row['refinement_package_asset_id']:>4} {row['stack_box_size']:>5} "
                      f"{row['output_pixel_size']:>7.3f} {row['symmetry']:>4} "
                      f"{row['number_of_classes']:>7}  {row['name']}")
            return 0
        job_id = client.submit(project, "create_refinement_package", _parameters(args),
                               profile=args.profile)
        if args.no_wait:
            print(json.dumps({"job_id": job_id}) if args.json else f"submitted job {job_id}")
            return 0
        job = client.wait_for_job(job_id, timeout=args.timeout, interval=0.2)
        rows, _ = client.assets(project, "packages")
        newest = rows[-1] if rows else None
        if args.json:
            print(json.dumps({"job_id": job_id, "state": job.get("state"), "package": newest}))
        elif job.get("state") == "completed" and newest is not None:
            print(f"job {job_id} completed: package {newest['refinement_package_asset_id']} "
                  f"({newest['name']}), stack {newest['stack_filename']}")
        else:
            print(f"job {job_id} ended {job.get('state')}; see `cistem job {job_id}`")
        return 0 if job.get("state") == "completed" else 1

    return with_client(f"packages {command}", body)
