"""Importing movies, images, volumes, particle positions and refinement packages."""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cistemd.errors import ProjectError
from cistemd.io import cistem_star, mrc, par
from cistemd.io.parameters import ParticleParameters
from cistemd.project import Project
from cistemd.project.imports import frealign_half_set

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARTICLES = DATA / "particles"
MICROGRAPHS = DATA / "real_micrographs"
MAPS = DATA / "maps"

MOVIE_DEFAULTS: dict[str, Any] = {"voltage_kv": 300, "spherical_aberration_mm": 2.7,
                                  "pixel_size_angstroms": 1.0, "exposure_per_frame": 1.5}
IMAGE_DEFAULTS: dict[str, Any] = {"voltage_kv": 300, "spherical_aberration_mm": 2.7,
                                  "pixel_size_angstroms": 1.0}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def write_movie(path: Path, n_frames: int = 5, shape: tuple[int, int] = (40, 56),
                pixel: float = 1.0) -> Path:
    frames = np.random.default_rng(1).poisson(2.0, size=(n_frames, *shape)).astype(np.uint16)
    mrc.write(path, frames, voxel_size_angstroms=pixel, kind="stack")
    return path


def write_image(path: Path, shape: tuple[int, int] = (40, 56), pixel: float = 1.0) -> Path:
    data = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    mrc.write(path, data, voxel_size_angstroms=pixel)
    return path


def write_stack(path: Path, n: int, box: int = 32, pixel: float = 1.5,
                shape: tuple[int, int] | None = None) -> Path:
    data = np.random.default_rng(3).normal(size=(n, *(shape or (box, box)))).astype(np.float32)
    mrc.write(path, data, voxel_size_angstroms=pixel, kind="stack")
    return path


def dump(project: Project) -> str:
    with closing(sqlite3.connect(project.db_path)) as conn:
        return "\n".join(conn.iterdump())


@pytest.fixture
def project(tmp_path: Path):
    with Project.create(tmp_path / "proj") as opened:
        yield opened


# -- movies ----------------------------------------------------------------------------------


def test_import_movies_records_cistem_columns(project: Project, tmp_path: Path) -> None:
    movies = [write_movie(tmp_path / f"movie_{i}.mrc") for i in range(3)]
    gain = write_image(tmp_path / "gain.mrc", (40, 56))
    ids = project.import_movies(
        movies, gain_filename=gain, desired_pixel_size_angstroms=1.5,
        correct_mag_distortion=True, mag_distortion_angle=42.0,
        mag_distortion_major_scale=1.02, mag_distortion_minor_scale=0.99, **MOVIE_DEFAULTS,
    )
    assert ids == [1, 2, 3]
    rows = project.movies()
    assert [r["filename"] for r in rows] == [str(m) for m in movies]
    first = rows[0]
    assert first == first | {
        "name": "movie_0", "position_in_stack": 1, "x_size": 56, "y_size": 40,
        "number_of_frames": 5, "voltage": 300.0, "pixel_size": 1.0, "dose_per_frame": 1.5,
        "spherical_aberration": 2.7, "gain_filename": str(gain), "dark_filename": "",
        "output_binning_factor": 1.5, "correct_mag_distortion": 1,
        "mag_distortion_angle": 42.0, "mag_distortion_major_scale": 1.02,
        "mag_distortion_minor_scale": 0.99, "protein_is_white": 0,
        "eer_super_res_factor": 1, "eer_frames_per_image": 0,
    }
    defaults = project.query("SELECT * FROM MOVIE_IMPORT_DEFAULTS")
    assert len(defaults) == 1 and defaults[0]["desired_pixel_size"] == 1.5
    assert defaults[0]["gain_reference_filename"] == str(gain)
    assert project.last_warnings == []
    # importing the same files again: skipped, with a note (cisTEM does this)
    again = project.import_movies([movies[0], tmp_path / "." / "movie_1.mrc"], **MOVIE_DEFAULTS)
    assert again == []
    assert len(project.last_warnings) == 2 and "already in the project" in project.last_warnings[0]
    assert project.summary()["movies"] == 3


def test_import_tiff_movie(project: Project, tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "frames.tif"
    tifffile.imwrite(path, np.ones((6, 32, 48), dtype=np.uint8))
    [movie] = project.import_movies([path], **MOVIE_DEFAULTS)
    row = project.movies()[0]
    assert (row["movie_asset_id"], row["x_size"], row["y_size"], row["number_of_frames"]) == (
        movie, 48, 32, 6)


def test_gain_reference_checks(project: Project, tmp_path: Path) -> None:
    movie = write_movie(tmp_path / "m.mrc", shape=(40, 56))
    before = dump(project)
    with pytest.raises(ProjectError, match=r"gain reference .*wrong\.mrc is 50×40 .* 56×40"):
        project.import_movies([movie], gain_filename=write_image(tmp_path / "wrong.mrc", (40, 50)),
                              **MOVIE_DEFAULTS)
    with pytest.raises(ProjectError, match="single image"):
        project.import_movies([movie], gain_filename=write_movie(tmp_path / "g.mrc"),
                              **MOVIE_DEFAULTS)
    with pytest.raises(ProjectError, match="gain reference does not exist"):
        project.import_movies([movie], gain_filename=tmp_path / "nope.mrc", **MOVIE_DEFAULTS)
    assert dump(project) == before
    transposed = write_image(tmp_path / "transposed.mrc", (56, 40))
    assert project.import_movies([movie], gain_filename=transposed, **MOVIE_DEFAULTS) == [1]
    assert any("transpose" in w and "rotated" in w for w in project.last_warnings)
    dark = write_image(tmp_path / "dark.mrc", (40, 56))
    other = write_movie(tmp_path / "m2.mrc", shape=(40, 56))
    project.import_movies([other], dark_filename=dark, **MOVIE_DEFAULTS)
    assert project.movies()[1]["dark_filename"] == str(dark)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixel_size_angstroms": 0.0}, "pixel_size_angstroms must be a positive"),
        ({"pixel_size_angstroms": float("nan")}, "pixel_size_angstroms must be a positive"),
        ({"exposure_per_frame": 0.0}, "exposure_per_frame"),
        ({"voltage_kv": -300}, "voltage_kv"),
        ({"spherical_aberration_mm": -0.1}, "spherical_aberration_mm"),
        ({"desired_pixel_size_angstroms": 0.8}, "smaller than the movie pixel size"),
        ({"correct_mag_distortion": True, "mag_distortion_minor_scale": 0.0},
         "mag_distortion_minor_scale"),
        ({"eer_super_res_factor": 3}, "eer_super_res_factor"),
    ],
)
def test_movie_values_are_checked(project: Project, tmp_path: Path, change, message) -> None:
    movie = write_movie(tmp_path / "m.mrc")
    before = dump(project)
    with pytest.raises(ProjectError, match=message) as info:
        project.import_movies([movie], **(MOVIE_DEFAULTS | change))
    assert info.value.code == "invalid_input"
    assert dump(project) == before


def test_failed_movie_import_changes_nothing(project: Project, tmp_path: Path) -> None:
    good = [write_movie(tmp_path / f"ok_{i}.mrc") for i in range(2)]
    text = tmp_path / "notes.mrc"
    text.write_text("not an image at all\n")
    before = dump(project)
    with pytest.raises(ProjectError, match=r"missing\.mrc: the movie does not exist"):
        project.import_movies([*good, tmp_path / "missing.mrc"], **MOVIE_DEFAULTS)
    with pytest.raises(ProjectError, match=r"notes\.mrc"):
        project.import_movies([*good, text], **MOVIE_DEFAULTS)
    assert dump(project) == before
    assert project.summary()["movies"] == 0


def test_unusual_voltage_and_single_frame_are_accepted_with_notes(project: Project,
                                                                  tmp_path: Path) -> None:
    project.import_movies([write_movie(tmp_path / "one.mrc", n_frames=1)],
                          **(MOVIE_DEFAULTS | {"voltage_kv": 120}))
    notes = " ".join(project.last_warnings)
    assert "120 kV" in notes and "single frame" in notes


# -- images ----------------------------------------------------------------------------------


def test_import_real_micrographs(project: Project) -> None:
    fei = need(MICROGRAPHS / "fei-extended.mrc")
    epu = need(MICROGRAPHS / "epu2.9_example.mrc")
    ids = project.import_images([fei, epu], voltage_kv=300, spherical_aberration_mm=2.7,
                                pixel_size_angstroms=0.8538)
    rows = project.images()
    assert [(r["x_size"], r["y_size"]) for r in rows] == [(3710, 3838), (4096, 4096)]
    assert all(r["parent_movie_id"] == -1 and r["ctf_estimation_id"] == -1 for r in rows)
    assert all(r["alignment_id"] == -1 for r in rows)
    assert rows[0]["name"] == "fei-extended" and ids == [1, 2]
    # epu2.9's header says 0.6666 Å: imported with the given value, and a note
    assert any("epu2.9_example.mrc" in w and "0.666" in w for w in project.last_warnings)
    assert project.query("SELECT * FROM IMAGE_IMPORT_DEFAULTS")[0]["pixel_size"] == 0.8538


def test_images_must_be_single_2d_images(project: Project, tmp_path: Path) -> None:
    before = dump(project)
    with pytest.raises(ProjectError, match="import movies with import_movies"):
        project.import_images([write_movie(tmp_path / "movie.mrc")], **IMAGE_DEFAULTS)
    volume = tmp_path / "v.mrc"
    mrc.write(volume, np.zeros((8, 8, 8), np.float32), kind="volume")
    with pytest.raises(ProjectError, match="volume of 8 sections"):
        project.import_images([volume], **IMAGE_DEFAULTS)
    with pytest.raises(ProjectError, match="pixel_size_angstroms must be a positive"):
        project.import_images([write_image(tmp_path / "i.mrc")],
                              **(IMAGE_DEFAULTS | {"pixel_size_angstroms": -1}))
    assert dump(project) == before


# -- volumes ---------------------------------------------------------------------------------


def test_import_volumes(project: Project, tmp_path: Path) -> None:
    ribosome = need(MAPS / "clean70SRibosome_vol_65p.mrc")
    # the map's header has no voxel size: it must be given
    with pytest.raises(ProjectError, match="records no voxel size"):
        project.import_volumes([ribosome])
    [first] = project.import_volumes([ribosome], pixel_size_angstroms=5.0)
    synthetic = tmp_path / "cube.mrc"
    mrc.write(synthetic, np.zeros((16, 16, 16), np.float32), voxel_size_angstroms=2.5,
              kind="volume")
    elongated = tmp_path / "long.mrc"
    mrc.write(elongated, np.zeros((8, 16, 16), np.float32), voxel_size_angstroms=2.5,
              kind="volume")
    # a file named twice in one import goes in once, with a note
    ids = project.import_volumes([synthetic, elongated, tmp_path / "." / "cube.mrc"])
    assert [first, *ids] == [1, 2, 3]
    assert sum("already in the project" in w for w in project.last_warnings) == 1
    rows = project.volumes()
    assert [(r["pixel_size"], r["x_size"], r["y_size"], r["z_size"]) for r in rows] == [
        (5.0, 65, 65, 65), (2.5, 16, 16, 16), (2.5, 16, 16, 8)]
    assert rows[0]["reconstruction_job_id"] == -1 and rows[0]["half_map1_filename"] == ""
    assert any("not cubic" in w for w in project.last_warnings)
    with pytest.raises(ProjectError, match="volumes must be 3-D maps"):
        project.import_volumes([write_image(tmp_path / "flat.mrc")])
    assert project.import_volumes([ribosome], pixel_size_angstroms=5.0) == []  # duplicate


# -- particle positions ----------------------------------------------------------------------


def test_import_particle_positions_by_id_and_name(project: Project, tmp_path: Path) -> None:
    first = write_image(tmp_path / "mic_a.mrc", (100, 100), pixel=2.0)
    second = write_image(tmp_path / "mic_b.mrc", (100, 100), pixel=2.0)
    ids = project.import_images([first, second], **(IMAGE_DEFAULTS | {"pixel_size_angstroms": 2}))
    text = tmp_path / "coords.txt"
    text.write_text(
        "# image  x(Å)  y(Å)\n"
        f"{ids[1]} 10.0 20.0\n"
        "\n"
        f"{first} 30.5 40.0\n"
        "mic_b.mrc 50 60 0.9\n"
        "mic_a 500 10\n"
    )
    assert project.import_particle_positions(text) == 4
    rows = project.particle_positions()
    assert [(r["parent_image_asset_id"], r["x_position"], r["y_position"]) for r in rows] == [
        (ids[1], 10.0, 20.0), (ids[0], 30.5, 40.0), (ids[1], 50.0, 60.0), (ids[0], 500.0, 10.0)]
    assert all(r["picking_id"] == -1 and r["pick_job_id"] == -1 for r in rows)
    notes = " ".join(project.last_warnings)
    assert "1 particle position(s) lie outside" in notes  # 500 Å > 100 px × 2 Å
    assert "line 5: ignored 1 extra value(s)" in notes
    assert project.particle_positions(ids[0])[0]["x_position"] == 30.5


def test_unresolved_positions_import_nothing(project: Project, tmp_path: Path) -> None:
    project.import_images([write_image(tmp_path / "a" / "same.mrc"),
                           write_image(tmp_path / "b" / "same.mrc")], **IMAGE_DEFAULTS)
    before = dump(project)
    text = tmp_path / "coords.txt"
    text.write_text("1 1 1\nunknown.mrc 1 1\n")
    with pytest.raises(ProjectError, match=r"'unknown.mrc' .*import those images first"):
        project.import_particle_positions(text)
    text.write_text("1 1 1\nsame.mrc 1 1\n")
    with pytest.raises(ProjectError, match="ambiguous"):
        project.import_particle_positions(text)
    text.write_text("1 1 1\n7 1 1\n")
    with pytest.raises(ProjectError, match="no image asset with id 7"):
        project.import_particle_positions(text)
    text.write_text("1 1\n")
    with pytest.raises(ProjectError, match=r"coords\.txt"):
        project.import_particle_positions(text)
    with pytest.raises(ProjectError, match="does not exist"):
        project.import_particle_positions(tmp_path / "none.txt")
    assert dump(project) == before


def test_add_particle_positions(project: Project, tmp_path: Path) -> None:
    [image] = project.import_images([write_image(tmp_path / "a.mrc")], **IMAGE_DEFAULTS)
    ids = project.add_particle_positions(image, [1.0, 2.0], [3.0, 4.0], peak_heights=[5.0, 6.0],
                                         picking_id=3, pick_job_id=9)
    assert ids == [1, 2]
    row = project.particle_positions()[1]
    assert (row["peak_height"], row["picking_id"], row["pick_job_id"]) == (6.0, 3, 9)
    with pytest.raises(ProjectError, match="differ in length"):
        project.add_particle_positions(image, [1.0], [1.0, 2.0])
    with pytest.raises(ProjectError, match="no image asset with id 99"):
        project.add_particle_positions(99, [1.0], [1.0])
    # removing the image removes its positions (as cisTEM does)
    project.delete_assets("image", [image])
    assert project.particle_positions() == []


# -- refinement packages ---------------------------------------------------------------------


def test_import_relion31_package(project: Project) -> None:
    import starfile

    star = need(PARTICLES / "relion31.star")
    stack = need(PARTICLES / "relion31.mrcs")
    package = project.import_refinement_package(stack_path=stack, parameters_path=star,
                                                symmetry="c1")
    [info] = project.refinement_packages()
    assert info == info | {
        "refinement_package_asset_id": package, "name": "Refinement Package #1 (Relion Import)",
        "stack_filename": str(stack), "stack_box_size": 256, "output_pixel_size": 2.806,
        "symmetry": "C1", "molecular_weight": 400.0, "particle_size": 150.0,
        "number_of_classes": 1, "number_of_particles": 5,
    }
    [refinement] = project.refinements(package)
    assert refinement["name"] == "Imported Parameters"
    assert info["last_refinement_id"] == refinement["refinement_id"]
    assert (refinement["number_of_particles"], refinement["number_of_classes"]) == (5, 1)
    # compare with the star file read independently
    particles = starfile.read(star)["particles"]
    optics = starfile.read(star)["optics"]
    rid = refinement["refinement_id"]
    results = project.query(f"SELECT * FROM REFINEMENT_RESULT_{rid}_1")
    assert [r["position_in_stack"] for r in results] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["psi"] for r in results], particles["rlnAnglePsi"])
    np.testing.assert_allclose([r["theta"] for r in results], particles["rlnAngleTilt"])
    np.testing.assert_allclose([r["phi"] for r in results], particles["rlnAngleRot"])
    np.testing.assert_allclose([r["xshift"] for r in results], -particles["rlnOriginXAngst"])
    np.testing.assert_allclose([r["yshift"] for r in results], -particles["rlnOriginYAngst"])
    np.testing.assert_allclose([r["defocus1"] for r in results], particles["rlnDefocusU"])
    np.testing.assert_allclose([r["defocus2"] for r in results], particles["rlnDefocusV"])
    np.testing.assert_allclose([r["defocus_angle"] for r in results],
                               particles["rlnDefocusAngle"])
    # RELION imports: score 0, sigma 10, occupancy 100, LogP 0, active (reference §5.3)
    assert {(r["score"], r["sigma"], r["occupancy"], r["logp"], r["image_is_active"])
            for r in results} == {(0.0, 10.0, 100.0, 0.0, 1)}
    assert {r["microscope_voltage"] for r in results} == {float(optics["rlnVoltage"][0])}
    assert {r["microscope_cs"] for r in results} == {float(optics["rlnSphericalAberration"][0])}
    assert {r["amplitude_contrast"] for r in results} == {
        float(optics["rlnAmplitudeContrast"][0])}
    contained = project.query(f"SELECT * FROM REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package}")
    assert [c["assigned_subset"] for c in contained] == list(particles["rlnRandomSubset"])
    assert all(c["parent_image_asset_id"] == -1 for c in contained)
    np.testing.assert_allclose([c["defocus_1"] for c in contained], particles["rlnDefocusU"])
    # the star refers to Extract/job133/...mrcs; the stack header's 1 Å is not the 2.806 Å used
    # the stack header's 1 Å is not the 2.806 Å of the star file
    assert any("2.806" in w for w in project.last_warnings)
    references = project.query(f"SELECT * FROM REFINEMENT_PACKAGE_CURRENT_REFERENCES_{package}")
    assert references == [{"class_number": 1, "volume_asset_id": -1}]
    assert project.query(f"SELECT * FROM REFINEMENT_PACKAGE_REFINEMENTS_LIST_{package}") == [
        {"refinement_number": 1, "refinement_id": rid}]
    assert project.query(f"SELECT CLASS_NUMBER FROM REFINEMENT_DETAILS_{rid}") == [
        {"class_number": 1}]
    assert project.integrity_check() == []


def test_import_relion30_package_links_micrographs(project: Project, tmp_path: Path) -> None:
    import starfile

    star = need(PARTICLES / "sample_particles_relion30.star")
    stack = need(PARTICLES / "sample.mrcs")
    # the star's particles come from "micrograph.mrc"; make it an image asset first
    [image] = project.import_images([write_image(tmp_path / "micrograph.mrc", (64, 64))],
                                    **(IMAGE_DEFAULTS | {"pixel_size_angstroms": 1.25}))
    package = project.import_refinement_package(stack_path=stack, parameters_path=star,
                                                name="EMPIAR-10017 sample",
                                                molecular_weight_kda=500.0,
                                                largest_dimension_angstroms=120.0)
    [info] = project.refinement_packages()
    assert info["name"] == "EMPIAR-10017 sample" and info["number_of_particles"] == 17
    table = starfile.read(star)
    pixel = 5.0 * 1e4 / float(table["rlnMagnification"][0])  # detector pixel / magnification
    assert math.isclose(info["output_pixel_size"], pixel, rel_tol=1e-6)
    contained = project.query(
        f"SELECT * FROM REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package} "
        "ORDER BY POSITION_IN_STACK")
    assert {c["parent_image_asset_id"] for c in contained} == {image}
    np.testing.assert_allclose([c["x_position"] for c in contained],
                               table["rlnCoordinateX"] * 1.25)
    np.testing.assert_allclose([c["y_position"] for c in contained],
                               table["rlnCoordinateY"] * 1.25)
    rid = info["last_refinement_id"]
    results = project.query(f"SELECT XSHIFT, YSHIFT FROM REFINEMENT_RESULT_{rid}_1")
    # RELION 3.0 origins are in pixels: x = -rlnOriginX × pixel size
    np.testing.assert_allclose([r["xshift"] for r in results], -table["rlnOriginX"] * pixel,
                               atol=1e-9)
    np.testing.assert_allclose([r["yshift"] for r in results], -table["rlnOriginY"] * pixel,
                               atol=1e-9)
    assert any("linked to image assets" in w for w in project.last_warnings)


def test_import_empiar_package_assigns_half_sets_as_cistem(project: Project) -> None:
    star = need(PARTICLES / "empiar_10076_7.star")
    stack = need(PARTICLES / "empiar_10076_7.mrc")
    package = project.import_refinement_package(stack_path=stack, parameters_path=star)
    contained = project.query(f"SELECT ASSIGNED_SUBSET FROM "
                              f"REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package}")
    assert [c["assigned_subset"] for c in contained] == [frealign_half_set(i, 7) for i in range(7)]
    assert [frealign_half_set(i, 40) for i in range(0, 40, 4)] == [2, 1] * 5


def test_frealign_par_package(project: Project, tmp_path: Path) -> None:
    n = 20
    rng = np.random.default_rng(7)
    params = ParticleParameters.with_defaults(n, [
        "position_in_stack", "psi", "theta", "phi", "x_shift", "y_shift", "image_is_active",
        "defocus_1", "defocus_2", "defocus_angle", "phase_shift", "occupancy", "logp", "sigma",
        "score", "score_change"])
    params.set("psi", rng.uniform(0, 360, n).round(2))
    params.set("theta", rng.uniform(0, 180, n).round(2))
    params.set("x_shift", rng.normal(0, 3, n).round(2))
    params.set("defocus_1", rng.uniform(9000, 20000, n).round(1))
    params.set("defocus_2", params.get("defocus_1") - 200)
    params.set("score", rng.uniform(5, 30, n).round(2))
    params.set("occupancy", np.full(n, 50.0))
    parfile = tmp_path / "refined.par"
    par.write(parfile, params)
    stack = write_stack(tmp_path / "stack.mrc", n, box=32, pixel=1.5)
    before = dump(project)
    with pytest.raises(ProjectError, match="carry no pixel size"):
        project.import_refinement_package(stack_path=stack, parameters_path=parfile)
    assert dump(project) == before
    package = project.import_refinement_package(
        stack_path=stack, parameters_path=parfile, pixel_size_angstroms=1.5, symmetry="D7",
        voltage_kv=200, spherical_aberration_mm=2.0, amplitude_contrast=0.1)
    info = project.refinement_packages()[0]
    assert (info["symmetry"], info["name"]) == ("D7", "Refinement Package #1 (Frealign Import)")
    rid = info["last_refinement_id"]
    results = project.query(f"SELECT * FROM REFINEMENT_RESULT_{rid}_1")
    np.testing.assert_allclose([r["psi"] for r in results], params.get("psi"))
    np.testing.assert_allclose([r["xshift"] for r in results], params.get("x_shift"))
    np.testing.assert_allclose([r["score"] for r in results], params.get("score"))
    assert {r["occupancy"] for r in results} == {50.0}
    assert {(r["microscope_voltage"], r["microscope_cs"], r["amplitude_contrast"],
             r["pixel_size"]) for r in results} == {(200.0, 2.0, 0.1, 1.5)}
    subsets = [r["assigned_subset"] for r in results]
    assert subsets == [2, 2, 1, 1] * 5  # blocks of n // 10 = 2, alternating from 2
    assert package == 1


RELION30_STAR = """
data_

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
_rlnAnglePsi #8
_rlnOriginX #9
{rows}
"""


def test_relion_image_numbers_give_stack_positions(project: Project, tmp_path: Path) -> None:
    star = tmp_path / "shuffled.star"
    star.write_text(RELION30_STAR.format(rows="\n".join([
        "2@old_stack.mrcs 10000 9000 10 300 2.7 0.1 20 1.0",
        "1@old_stack.mrcs 11000 9500 11 300 2.7 0.1 10 2.0",
        "3@old_stack.mrcs 12000 9800 12 300 2.7 0.1 30 -1.0",
    ])))
    stack = write_stack(tmp_path / "mine.mrcs", 3, box=16, pixel=1.5)
    package = project.import_refinement_package(stack_path=stack, parameters_path=star,
                                                pixel_size_angstroms=1.5)
    assert any("refers to image stack(s) old_stack.mrcs" in w for w in project.last_warnings)
    rid = project.refinement_packages()[0]["last_refinement_id"]
    rows = project.query(f"SELECT POSITION_IN_STACK, PSI, XSHIFT, DEFOCUS1 "
                         f"FROM REFINEMENT_RESULT_{rid}_1")
    assert [tuple(r.values()) for r in rows] == [
        (1, 10.0, -3.0, 11000.0), (2, 20.0, -1.5, 10000.0), (3, 30.0, 1.5, 12000.0)]
    # image numbers that do not number this stack 1..n: row order, with a note
    star.write_text(RELION30_STAR.format(rows="\n".join([
        "1@a.mrcs 10000 9000 10 300 2.7 0.1 20 0",
        "1@b.mrcs 11000 9500 11 300 2.7 0.1 10 0",
        "2@a.mrcs 12000 9800 12 300 2.7 0.1 30 0",
    ])))
    second = project.import_refinement_package(stack_path=stack, parameters_path=star,
                                               pixel_size_angstroms=1.5)
    assert any("do not run 1..3" in w for w in project.last_warnings)
    rid = project.refinement_packages()[1]["last_refinement_id"]
    assert [r["psi"] for r in project.query(f"SELECT PSI FROM REFINEMENT_RESULT_{rid}_1")] == [
        20.0, 10.0, 30.0]
    assert second == package + 1


def test_cistem_star_package_keeps_file_values(project: Project, tmp_path: Path) -> None:
    n = 6
    params = ParticleParameters.with_defaults(n)
    params.set("pixel_size", 1.2)
    params.set("amplitude_contrast", 0.1)
    params.set("microscope_voltage_kv", 200.0)
    params.set("x_shift", np.arange(n, dtype=float))
    params.set("score", np.linspace(1, 2, n))
    params.set("assigned_subset", [1, 2] * 3)
    params.set("original_x_position", np.linspace(100, 600, n))
    params.set("position_in_stack", [2, 1, 3, 4, 6, 5])
    star = tmp_path / "params.star"
    cistem_star.write(star, params)
    stack = write_stack(tmp_path / "stack.mrcs", n, box=24, pixel=1.2)
    package = project.import_refinement_package(stack_path=stack, parameters_path=star)
    info = project.refinement_packages()[0]
    assert info["output_pixel_size"] == 1.2 and "cisTEM Import" in info["name"]
    rows = project.query(f"SELECT * FROM REFINEMENT_RESULT_{info['last_refinement_id']}_1")
    by_position = {r["position_in_stack"]: r for r in rows}
    assert by_position[2]["xshift"] == 0.0 and by_position[1]["xshift"] == 1.0
    assert by_position[1]["microscope_voltage"] == 200.0
    contained = project.query(f"SELECT * FROM REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{package}")
    assert {c["position_in_stack"]: c["assigned_subset"] for c in contained}[2] == 1
    assert {c["position_in_stack"]: c["x_position"] for c in contained}[1] == 200.0


def test_package_errors_leave_the_project_unchanged(project: Project, tmp_path: Path) -> None:
    star = need(PARTICLES / "relion31.star")
    five = need(PARTICLES / "relion31.mrcs")
    project.import_refinement_package(stack_path=five, parameters_path=star)
    before = dump(project)
    wrong = need(PARTICLES / "sample.mrcs")  # 17 images
    with pytest.raises(ProjectError) as info:
        project.import_refinement_package(stack_path=wrong, parameters_path=star)
    message = str(info.value)
    assert "relion31.star describes 5 particles" in message
    assert "sample.mrcs holds 17 images" in message
    with pytest.raises(ProjectError, match="only square images"):
        project.import_refinement_package(
            stack_path=write_stack(tmp_path / "rect.mrcs", 5, shape=(20, 30)),
            parameters_path=star)
    with pytest.raises(ProjectError, match="the particle stack does not exist"):
        project.import_refinement_package(stack_path=tmp_path / "x.mrcs", parameters_path=star)
    with pytest.raises(ProjectError, match="point group"):
        project.import_refinement_package(stack_path=five, parameters_path=star, symmetry="Q4")
    other = tmp_path / "notes.star"
    other.write_text("data_\nloop_\n_foo #1\n1\n")
    with pytest.raises(ProjectError, match="no _cisTEM or _rln labels"):
        project.import_refinement_package(stack_path=five, parameters_path=other)
    with pytest.raises(ProjectError, match="molecular_weight_kda"):
        project.import_refinement_package(stack_path=five, parameters_path=star,
                                          molecular_weight_kda=0)
    assert dump(project) == before


def test_deleting_a_package_removes_its_refinements_and_views(project: Project) -> None:
    star = need(PARTICLES / "relion31.star")
    stack = need(PARTICLES / "relion31.mrcs")
    first = project.import_refinement_package(stack_path=stack, parameters_path=star)
    second = project.import_refinement_package(stack_path=stack, parameters_path=star)
    assert project.delete_assets("refinement_package", [first]) == 1
    views = {r["name"] for r in project.query(
        "SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert {f"REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{first}", "REFINEMENT_RESULT_1_1",
            "REFINEMENT_DETAILS_1", "REFINEMENT_PACKAGE_REFINEMENTS_LIST_1"}.isdisjoint(views)
    assert {f"REFINEMENT_PACKAGE_CONTAINED_PARTICLES_{second}", "REFINEMENT_RESULT_2_1",
            "REFINEMENT_DETAILS_2"} <= views
    assert project.summary()["refinements"] == 1
    assert project.query("SELECT COUNT(*) AS n FROM REFINEMENT_RESULTS") == [{"n": 5}]
    assert project.integrity_check() == []
