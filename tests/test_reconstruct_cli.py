"""``cistem project3d`` -> ``reconstruct3d`` (single pass and dump/merge3d) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cistemd.cli.main import main
from cistemd.io import mrc
from cistemd.io.statistics import read_statistics
from cistemd.kernels import resolution, simulate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rec")
    model = simulate.asymmetric_protein_model(n_residues=300, seed=4)
    volume = simulate.coulomb_potential_map(model, box=40, pixel_size_angstroms=2.5,
                                            b_factor_angstroms2=40.0)
    mrc.write(root / "truth.mrc", volume, voxel_size_angstroms=2.5, kind="volume")
    status = main([
        "project3d", str(root / "truth.mrc"), "--random", "1200", "--defocus", "12000",
        "--snr", "0.1", "--output", str(root / "stack.mrc"),
        "--write-parameters", str(root / "particles.star"), "--json",
    ])
    assert status == 0
    return {"root": root, "truth": root / "truth.mrc", "stack": root / "stack.mrc",
            "params": root / "particles.star"}


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    return json.loads(lines[0])


def test_project3d_reports_and_writes(dataset: dict[str, Path]) -> None:
    stack = mrc.read(dataset["stack"])
    assert stack.shape == (1200, 40, 40)
    assert mrc.read_header(dataset["stack"]).voxel_size_angstroms[0] == pytest.approx(2.5)


def test_reconstruct3d_json_and_files(dataset: dict[str, Path], capsys) -> None:
    capsys.readouterr()
    out = dataset["root"] / "map.mrc"
    status = main([
        "reconstruct3d", str(dataset["stack"]), str(dataset["params"]), "--output", str(out),
        "--molecular-mass", "35", "--outer-mask", "45", "--half-maps", "--json",
    ])
    assert status == 0
    summary = _json(capsys)
    assert summary["n_particles"] == 1200
    assert summary["particles_per_half"] == [600, 600]
    assert 5.0 <= summary["resolution_0143"] < 20.0
    assert summary["resolution_05"] >= summary["resolution_0143"]
    assert len(summary["statistics"]["fsc"]) == len(summary["statistics"]["shell"])
    for key in ("volume", "half_map_1", "half_map_2", "statistics"):
        assert Path(summary["files"][key]).exists()
    stats = read_statistics(summary["files"]["statistics"])
    assert stats.box_size == 40 and stats.pixel_size_angstroms == pytest.approx(2.5, abs=1e-3)
    truth = mrc.read(dataset["truth"])
    _, fsc = resolution.fsc(mrc.read(out), truth)
    assert fsc[:8].min() > 0.8  # the map is the structure


def test_dump_and_merge_match_single_pass(dataset: dict[str, Path], capsys) -> None:
    root = dataset["root"]
    for index, (first, last) in enumerate([(1, 500), (501, 1200)]):
        status = main([
            "reconstruct3d", str(dataset["stack"]), str(dataset["params"]),
            "--first", str(first), "--last", str(last), "--dump", str(root / f"d{index}.npz"),
            "--outer-mask", "45",
        ])
        assert status == 0
    capsys.readouterr()
    status = main([
        "merge3d", str(root / "d0.npz"), str(root / "d1.npz"), "--output",
        str(root / "merged.mrc"), "--molecular-mass", "35", "--outer-mask", "45", "--json",
    ])
    assert status == 0
    merged = _json(capsys)
    assert merged["n_dumps"] == 2
    status = main([
        "reconstruct3d", str(dataset["stack"]), str(dataset["params"]), "--output",
        str(root / "single.mrc"), "--molecular-mass", "35", "--outer-mask", "45",
    ])
    assert status == 0
    np.testing.assert_allclose(
        mrc.read(root / "merged.mrc"), mrc.read(root / "single.mrc"), atol=1e-4, rtol=1e-3
    )


def test_bad_inputs_exit_2(dataset: dict[str, Path], tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.star"
    bad.write_text("not a star file\n")
    assert main(["reconstruct3d", str(dataset["stack"]), str(bad), "--output",
                 str(tmp_path / "x.mrc")]) == 2
    assert "bad.star" in capsys.readouterr().err
    assert main(["reconstruct3d", str(dataset["stack"]), str(dataset["params"]), "--output",
                 str(tmp_path / "x.mrc"), "--symmetry", "Q7"]) == 2
    assert "symmetry" in capsys.readouterr().err
    assert main(["merge3d", str(bad), "--output", str(tmp_path / "y.mrc")]) == 2


def test_noise_free_stack_with_shifts_and_normalisation(tmp_path: Path, capsys) -> None:
    from cistemd.io import cistem_star

    model = simulate.asymmetric_protein_model(n_residues=200, seed=6)
    truth = simulate.coulomb_potential_map(model, box=32, pixel_size_angstroms=3.0,
                                           b_factor_angstroms2=30.0)
    mrc.write(tmp_path / "truth.mrc", truth, voxel_size_angstroms=3.0, kind="volume")
    assert main(["project3d", str(tmp_path / "truth.mrc"), "--random", "1500",
                 "--defocus", "10000", "--output", str(tmp_path / "s.mrc"),
                 "--write-parameters", str(tmp_path / "p.star")]) == 0
    # Shift the particles in the stack and record the shifts: reconstruction undoes them.
    params = cistem_star.read(tmp_path / "p.star")
    rng = np.random.default_rng(0)
    params.set("x_shift", rng.uniform(-6, 6, len(params)))
    params.set("y_shift", rng.uniform(-6, 6, len(params)))
    cistem_star.write(tmp_path / "shifted.star", params)
    assert main(["project3d", str(tmp_path / "truth.mrc"), "--angles",
                 str(tmp_path / "shifted.star"), "--output", str(tmp_path / "shifted.mrc")]) == 0
    capsys.readouterr()
    assert main(["reconstruct3d", str(tmp_path / "shifted.mrc"), str(tmp_path / "shifted.star"),
                 "--output", str(tmp_path / "map.mrc"), "--molecular-mass", "25",
                 "--outer-mask", "45", "--json"]) == 0
    summary = _json(capsys)
    assert summary["resolution_0143"] == pytest.approx(6.0, abs=0.5)  # Nyquist: noise-free
    shells, fsc = resolution.fsc(mrc.read(tmp_path / "map.mrc"), truth)
    # One defocus for all: shells at CTF zeros are determined less well.
    assert fsc[(shells >= 2) & (shells <= 12)].min() > 0.85
    assert np.median(fsc[(shells >= 2) & (shells <= 12)]) > 0.97
