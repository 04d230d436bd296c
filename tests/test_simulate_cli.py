"""``cistem simulate`` end to end, and the dataset action behind it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cistemd.actions.simulate import SimulationSpec, simulate_dataset
from cistemd.cli.commands import simulate as command
from cistemd.errors import InvalidInputError

SMALL = ["--size", "160", "--pixel-size", "2.5", "--particles", "3", "--frames", "4"]


def run_command(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_command_interface():
    assert command.NAME == "simulate"
    assert command.HELP and "\n" not in command.HELP
    assert command.__doc__ and "truth.json" in command.__doc__


@pytest.mark.parametrize("movie_format, suffix", [("tiff", ".tif"), ("mrc", ".mrc")])
def test_movies_end_to_end(tmp_path, capsys, movie_format, suffix):
    from cistemd.io import mrc, tiff

    out = tmp_path / "data"
    status = run_command(
        [
            str(out),
            *SMALL,
            *("--micrographs", "2", "--format", movie_format, "--gain-reference"),
            *("--json", "--seed", "3", "--drift", "6"),
        ]
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_micrographs"] == 2
    truth = json.loads((out / "truth.json").read_text())
    assert truth["version"] and truth["software"] == "cistemd"
    assert truth["spec"]["output_format"] == movie_format
    assert truth["n_particles"] == summary["n_particles"]
    assert (out / "reference_map.mrc").exists() and (out / "gain_reference.mrc").exists()
    gain = mrc.read(out / "gain_reference.mrc")
    assert gain.shape == (160, 160)
    assert np.all(gain[:, truth["gain_reference"]["dead_columns"]] == 0)
    reference = mrc.read(out / "reference_map.mrc")
    box = truth["reference_map"]["box_px"]
    assert reference.shape == (box, box, box)
    for entry in truth["micrographs"]:
        path = out / entry["filename"]
        assert path.suffix == suffix and path.exists()
        frames = tiff.read(path) if movie_format == "tiff" else mrc.read(path)
        assert frames.shape == (4, 160, 160)
        if movie_format == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as handle:
                assert handle.pages[0].compression == tifffile.COMPRESSION.LZW
        assert np.issubdtype(frames.dtype, np.integer)
        assert len(entry["frame_shifts_angstroms"]) == 4
        middle = entry["middle_frame_index"]
        assert entry["frame_shifts_relative_to_middle_angstroms"][middle] == [0.0, 0.0]
        ctf = entry["ctf"]
        assert ctf["defocus_1_angstroms"] >= ctf["defocus_2_angstroms"]
        assert ctf["defocus_1_angstroms"] - ctf["defocus_2_angstroms"] == pytest.approx(400.0)
        assert -90.0 < ctf["astigmatism_angle_degrees"] <= 90.0
        for particle in entry["particles"]:
            assert {"x_angstroms", "y_angstroms", "phi", "theta", "psi"} <= particle.keys()
            assert 0.0 <= particle["x_angstroms"] <= 159 * 2.5
    # Mean counts per pixel per frame = exposure x pixel size^2 (after gain correction).
    first = out / truth["micrographs"][0]["filename"]
    frames = (tiff.read(first) if movie_format == "tiff" else mrc.read(first)).astype(float)
    live = gain > 0
    corrected = frames[:, live] * gain[live]
    expected = 2.5 * 2.5**2
    assert corrected.mean() == pytest.approx(expected, rel=0.05)


def test_micrographs_and_text_summary(tmp_path, capsys):
    from cistemd.io import mrc

    out = tmp_path / "mics"
    assert run_command([str(out), *SMALL, "--micrographs", "1", "--format", "micrograph"]) == 0
    text = capsys.readouterr().out
    assert "truth" in text and "sim_0001.mrc" in text
    truth = json.loads((out / "truth.json").read_text())
    entry = truth["micrographs"][0]
    assert entry["kind"] == "micrograph" and entry["n_frames"] == 1
    image = mrc.read(out / entry["filename"])
    assert image.shape == (160, 160) and image.dtype == np.float32
    # One frame carries the whole exposure: 4 frames x 2.5 e/A^2.
    assert image.mean() == pytest.approx(10.0 * 2.5**2, rel=0.02)


def test_phase_shift_and_structure_choice(tmp_path):
    spec = SimulationSpec(
        structure="asymmetric",
        n_micrographs=1,
        size_px=128,
        pixel_size_angstroms=3.0,
        particles_per_micrograph=2,
        n_frames=2,
        phase_shift_degrees=90.0,
        output_format="mrc",
        seed=5,
    )
    truth = simulate_dataset(tmp_path, spec)
    ctf = truth["micrographs"][0]["ctf"]
    assert ctf["additional_phase_shift_degrees"] == pytest.approx(90.0)
    assert ctf["additional_phase_shift_radians"] == pytest.approx(np.pi / 2)
    assert truth["structure"]["name"] == "asymmetric"
    again = simulate_dataset(tmp_path / "again", spec)
    assert again["micrographs"][0]["particles"] == truth["micrographs"][0]["particles"]


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    status = run_command([str(tmp_path / "x"), *SMALL, "--defocus-min", "30000"])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("cistem simulate: ") and error.count("\n") == 1
    status = run_command([str(tmp_path / "y"), *SMALL, "--structure", str(tmp_path / "no.pdb")])
    assert status == 2
    assert "no.pdb" in capsys.readouterr().err
    status = run_command(
        [str(tmp_path / "z"), *SMALL, "--format", "micrograph", "--gain-reference"]
    )
    assert status == 2
    with pytest.raises(InvalidInputError, match="size_px"):
        SimulationSpec(size_px=10)
    with pytest.raises(InvalidInputError, match="n_frames"):
        SimulationSpec(n_frames=0)
