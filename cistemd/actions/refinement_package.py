"""``create_refinement_package``: cisTEM's "New Refinement Package" wizard as a job.

Two ways, as the wizard (reference §3.3; rows in :mod:`cistemd.project.packages`):

* ``source="positions"`` (default): the particle positions of a group (0 = all)
  are boxed out of their images. Stage 1 has one task per image: it reads the
  micrograph, replaces 6σ outliers with the mean, boxes each particle at
  ``round(x / pixel size)`` with edge-mean padding, normalises each box to zero
  mean and unit variance, inverts it when protein is white, and writes a stack
  chunk under Scratch. Stage 2 has one task that concatenates the chunks, in
  the planned order, into one stack. Its record renames the stack to
  ``Assets/ParticleStacks/particle_stack_<id>.mrc`` and writes the package:
  per-particle CTF from the parent image's active estimate, random initial
  parameters ("Random Parameters"), symmetry, number of classes, molecular
  weight and largest dimension. ``box_size = 0`` takes cisTEM's default from
  the largest dimension.
* ``source="package"``: a new package from ``parent_package`` without
  re-extracting (classes carried over, selected, merged; see
  :func:`cistemd.project.packages.create_from_existing_package`). This needs
  no worker computation beyond a check; the package is written when the one
  task's result is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cistemd.actions.base import Action, JSONLike, Parameter, Stage, TaskContext, TaskSpec
from cistemd.errors import InvalidInputError
from cistemd.project.layout import adopt_file

__all__ = ["ACTION", "CreateRefinementPackage"]


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InvalidInputError(f"parameter {name!r}: expected comma-separated integers, "
                                f"got {text!r}") from None


_SETTINGS = (
    "symmetry", "molecular_weight", "largest_dimension", "number_of_classes", "name", "seed",
    "parent_refinement", "carry_over_all_particles", "selected_classes", "class_sources",
    "assignment", "randomise_occupancies",
)


def _settings(parameters: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
    """Return the package settings the recording step needs (it sees only task results)."""
    return {name: parameters[name] for name in _SETTINGS}


class CreateRefinementPackage(Action):
    """Create a refinement package (see the module docstring)."""

    name = "create_refinement_package"
    title = "New Refinement Package"
    parameters = (
        Parameter("source", "str", "positions", "positions (box particles) or package",
                  choices=("positions", "package")),
        Parameter("particle_position_group", "int", 0, "particle positions (0 = all)", 0),
        Parameter("parent_package", "int", 0, "package to start from (source=package)", 0),
        Parameter("parent_refinement", "int", 0,
                  "its refinement to take parameters from (0 = last)", 0),
        Parameter("box_size", "int", 0, "box size in pixels (0 = 2.2 × largest dimension)",
                  0, 8192),
        Parameter("symmetry", "str", "C1", "point group: C<n>, D<n>, T, O or I"),
        Parameter("molecular_weight", "float", 300.0, "molecular weight (kDa)", 0.001, 1e6),
        Parameter("largest_dimension", "float", 150.0, "largest dimension (Å)", 1.0, 1e5),
        Parameter("number_of_classes", "int", 1, "number of classes", 1, 1000),
        Parameter("carry_over_all_particles", "bool", True,
                  "source=package: keep every particle and the parent's stack"),
        Parameter("selected_classes", "str", "",
                  "source=package: keep particles best in these classes, e.g. 1,3"),
        Parameter("class_sources", "str", "",
                  "source=package: old classes per new class, e.g. '1+2,3' (merge 1 and 2)"),
        Parameter("assignment", "str", "best_occupancy",
                  "merged classes: parameters from the best-occupancy or a random class",
                  choices=("best_occupancy", "random"), expert=True),
        Parameter("randomise_occupancies", "bool", False, "random initial occupancies",
                  expert=True),
        Parameter("name", "str", "", "package name ('' = Refinement Package #<id>)"),
        Parameter("seed", "int", -1, "seed of the random parameters (-1 = random)", -1,
                  expert=True),
    )

    def validate(self, values: Mapping[str, JSONLike]) -> dict[str, JSONLike]:
        """Check the parameters; the symmetry must be a point group."""
        from cistemd.errors import ProjectError
        from cistemd.project.packages import validate_symmetry

        checked = super().validate(values)
        try:
            checked["symmetry"] = validate_symmetry(str(checked["symmetry"]))
        except ProjectError as error:
            raise InvalidInputError(f"parameter 'symmetry': {error}") from None
        if checked["source"] == "package" and not checked["parent_package"]:
            raise InvalidInputError("parameter 'parent_package' is required with source=package")
        if (checked["source"] == "package" and not checked["carry_over_all_particles"]
                and not _int_list(str(checked["selected_classes"]), "selected_classes")):
            raise InvalidInputError(
                "parameter 'selected_classes': name the classes whose particles to keep "
                "(or set carry_over_all_particles)"
            )
        for group in str(checked["class_sources"]).split(","):
            _int_list(group.replace("+", ","), "class_sources")
        if checked["box_size"] and checked["box_size"] % 2:
            raise InvalidInputError("parameter 'box_size' must be even")
        return checked

    def start(
        self, parameters: Mapping[str, JSONLike], *, project: Any = None
    ) -> tuple[JSONLike, Stage]:
        """Plan the extraction (one task per image), or the copy from a package."""
        from cistemd.errors import ProjectError
        from cistemd.project.packages import default_box_size, package_particles_from_positions

        if project is None:
            raise InvalidInputError("create_refinement_package needs a project")
        if parameters["source"] == "package":
            payload: dict[str, JSONLike] = {
                "mode": "package", "parent_package": int(parameters["parent_package"]),
                "settings": _settings(parameters), "positions": [], "stack": "",
            }
            if not parameters["carry_over_all_particles"]:
                from cistemd.project.packages import positions_kept_by_classes

                try:
                    payload["positions"] = positions_kept_by_classes(
                        project, int(parameters["parent_package"]),
                        int(parameters["parent_refinement"]) or None,
                        _int_list(str(parameters["selected_classes"]), "selected_classes"),
                    )
                except ProjectError as error:
                    raise InvalidInputError(str(error)) from None
                parents = [p for p in project.refinement_packages()
                           if int(p["refinement_package_asset_id"])
                           == int(parameters["parent_package"])]
                if int(parents[0]["number_of_classes"]) > 1 and not payload["positions"]:
                    raise InvalidInputError(
                        "parameter 'selected_classes': no particle has its highest occupancy "
                        "in those classes"
                    )
                payload["stack"] = str(parents[0]["stack_filename"])
            return {"mode": "package"}, Stage(
                tasks=(TaskSpec(key="package", payload=payload, label="from package"),),
                final=True, label="new package",
            )
        group = int(parameters["particle_position_group"])
        try:
            ids = None if group == 0 else project.group_members("particle_position", group)
            particles = package_particles_from_positions(project, ids)
        except ProjectError as error:
            raise InvalidInputError(str(error)) from None
        pixel_sizes = {round(p.pixel_size_angstroms, 4) for p in particles}
        if len(pixel_sizes) > 1:
            raise InvalidInputError(
                f"the particles come from images of different pixel sizes {sorted(pixel_sizes)}"
                "; make a package per pixel size (use a particle position group)"
            )
        box = int(parameters["box_size"]) or default_box_size(
            float(parameters["largest_dimension"]), particles[0].pixel_size_angstroms
        )
        images = {int(r["image_asset_id"]): r for r in project.images()}
        by_image: dict[int, list[Any]] = {}
        for particle in particles:
            by_image.setdefault(particle.parent_image_asset_id, []).append(particle)
        tasks = []
        for image_id, members in by_image.items():
            image = images[image_id]
            tasks.append(TaskSpec(
                key=f"image-{image_id}",
                payload={
                    "mode": "extract",
                    "image_asset_id": image_id,
                    "image_filename": str(image["filename"]),
                    "pixel_size": float(image["pixel_size"]),
                    "protein_is_white": bool(image.get("protein_is_white") or 0),
                    "box_size": box,
                    "x": [p.x_angstroms for p in members],
                    "y": [p.y_angstroms for p in members],
                },
                label=Path(str(image["filename"])).name,
            ))
        plan = {
            "mode": "positions",
            "box_size": box,
            "images": list(by_image),
            "position_ids": [p.position_asset_id for p in particles],
            "pixel_size": particles[0].pixel_size_angstroms,
            "settings": _settings(parameters),
        }
        return plan, Stage(tasks=tuple(tasks), final=False, label="extract particles")

    def advance(
        self,
        parameters: Mapping[str, JSONLike],
        plan_state: JSONLike,
        results: Mapping[str, JSONLike],
        *,
        project: Any = None,
    ) -> tuple[JSONLike, Stage | None]:
        """After extraction, one task assembles the chunks into the stack."""
        if plan_state.get("assembled"):
            return plan_state, None
        missing = [i for i in plan_state["images"] if f"image-{i}" not in results]
        if missing:
            raise InvalidInputError(
                f"extraction failed for {len(missing)} image(s) (e.g. image asset {missing[0]}); "
                "no package was created"
            )
        chunks = [str(results[f"image-{i}"]["chunk"]) for i in plan_state["images"]]
        payload = {
            "mode": "assemble",
            "chunks": chunks,
            "box_size": int(plan_state["box_size"]),
            "pixel_size": float(plan_state["pixel_size"]),
            "position_ids": list(plan_state["position_ids"]),
            "settings": plan_state["settings"],
        }
        state = {**plan_state, "assembled": True}
        return state, Stage(tasks=(TaskSpec(key="assemble", payload=payload,
                                            label="assemble stack"),), final=True,
                            label="assemble stack")

    def run_task(
        self, payload: Mapping[str, JSONLike], context: TaskContext
    ) -> dict[str, JSONLike]:
        """Extract one image's particles, assemble the stack, or pass a package copy."""
        import numpy as np

        from cistemd.io import mrc

        scratch = Path(context.scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        mode = payload["mode"]
        if mode == "package":
            result: dict[str, JSONLike] = {
                "mode": "package", "parent_package": int(payload["parent_package"]),
                "settings": payload["settings"], "prepared_stack": "",
            }
            positions = [int(p) for p in payload.get("positions") or []]
            if positions:
                from cistemd.project.packages import copy_stack_images

                out = scratch / f"package_subset_attempt_{context.attempt}.mrc"
                copy_stack_images(str(payload["stack"]), str(out), positions)
                result["prepared_stack"] = str(out)
            return result
        if mode == "extract":
            from cistemd.actions.find_particles import read_micrograph
            from cistemd.kernels.extract import extract_particles, replace_outliers_with_mean

            image = replace_outliers_with_mean(read_micrograph(str(payload["image_filename"])))
            stack = extract_particles(
                image, payload["x"], payload["y"],
                pixel_size_angstroms=float(payload["pixel_size"]),
                box_size=int(payload["box_size"]),
                invert=bool(payload["protein_is_white"]),
            )
            chunk = scratch / (f"chunk_image_{int(payload['image_asset_id'])}"
                               f"_attempt_{context.attempt}.mrc")
            mrc.write(chunk, stack, voxel_size_angstroms=float(payload["pixel_size"]),
                      kind="stack")
            return {"mode": "extract", "chunk": str(chunk), "count": int(stack.shape[0])}
        if mode == "assemble":
            parts = [np.asarray(mrc.read(str(c))) for c in payload["chunks"]]
            parts = [p[None] if p.ndim == 2 else p for p in parts]
            stack = np.concatenate(parts, axis=0).astype(np.float32)
            if stack.shape[0] != len(payload["position_ids"]):
                raise InvalidInputError(
                    f"assembled {stack.shape[0]} images for {len(payload['position_ids'])} "
                    "particles"
                )
            out = scratch / f"particle_stack_attempt_{context.attempt}.mrc"
            mrc.write(out, stack, voxel_size_angstroms=float(payload["pixel_size"]),
                      kind="stack")
            manifest = scratch / f"particle_stack_attempt_{context.attempt}.json"
            manifest.write_text(json.dumps({"position_ids": payload["position_ids"]}))
            for chunk in payload["chunks"]:
                Path(str(chunk)).unlink(missing_ok=True)
            return {"mode": "assemble", "stack": str(out), "manifest": str(manifest),
                    "count": int(stack.shape[0]), "box_size": int(payload["box_size"]),
                    "settings": payload["settings"]}
        raise InvalidInputError(f"create_refinement_package: unknown task mode {mode!r}")

    def record(
        self, project: Any, job_id: int, task_key: str, result: Mapping[str, JSONLike]
    ) -> None:
        """Write the package when the stack is assembled (or the package copy)."""
        from cistemd.project import packages

        mode = result.get("mode")
        if mode == "extract":
            return
        params = dict(result["settings"])
        seed = int(params.get("seed", -1))
        name = str(params.get("name") or "") or None
        if mode == "package":
            sources = None
            if str(params.get("class_sources") or "").strip():
                sources = [_int_list(group.replace("+", ","), "class_sources")
                           for group in str(params["class_sources"]).split(",")]
            packages.create_from_existing_package(
                project, int(result["parent_package"]),
                refinement_id=int(params.get("parent_refinement") or 0) or None,
                carry_over_all_particles=bool(params.get("carry_over_all_particles", True)),
                selected_classes=_int_list(str(params.get("selected_classes") or ""),
                                           "selected_classes"),
                class_sources=sources,
                assignment=str(params.get("assignment", "best_occupancy")),
                randomise_occupancies=bool(params.get("randomise_occupancies", False)),
                number_of_classes=None if sources is not None else int(
                    params.get("number_of_classes", 1)),
                symmetry=str(params.get("symmetry", "C1")),
                molecular_weight_kda=float(params.get("molecular_weight", 300.0)),
                largest_dimension_angstroms=float(params.get("largest_dimension", 150.0)),
                name=name, seed=None if seed < 0 else seed,
                prepared_stack=str(result.get("prepared_stack") or "") or None,
            )
            return
        ids = json.loads(Path(str(result["manifest"])).read_text())["position_ids"]
        particles = packages.package_particles_from_positions(project, ids)
        order = {pid: i for i, pid in enumerate(ids)}
        particles.sort(key=lambda p: order[p.position_asset_id])
        package_id = packages.next_package_id(project)
        target = project.layout.particle_stack_path(package_id)
        if adopt_file(str(result["stack"]), target) is None:
            raise FileNotFoundError(f"the particle stack {result['stack']} is missing")
        Path(str(result["manifest"])).unlink(missing_ok=True)
        packages.record_new_package(
            project, particles, stack_filename=str(target),
            box_size=int(result["box_size"]), symmetry=str(params.get("symmetry", "C1")),
            molecular_weight_kda=float(params.get("molecular_weight", 300.0)),
            largest_dimension_angstroms=float(params.get("largest_dimension", 150.0)),
            number_of_classes=int(params.get("number_of_classes", 1)),
            name=name, seed=None if seed < 0 else seed, package_id=package_id,
        )


ACTION = CreateRefinementPackage
"""The action class this module provides (see :data:`cistemd.actions.base.ACTION_MODULES`)."""
