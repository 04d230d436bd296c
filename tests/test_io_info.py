"""``cistem info``: describe every supported file, JSON output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cistemd.cli.main import main as cistem_main
from cistemd.errors import InvalidInputError
from cistemd.io import cistem_star, info, mrc, par, positions, relion_star, tiff
from cistemd.io.parameters import ParticleParameters

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def _params() -> ParticleParameters:
    table = ParticleParameters.with_defaults(3)
    table.set("defocus_1", [10000.0, 12000.0, 14000.0])
    table.set("stack_filename", np.array(["s.mrcs"] * 3, dtype=object))
    return table


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "mrc": tmp_path / "vol.mrc",
        "tiff": tmp_path / "movie.tif",
        "cistem_star": tmp_path / "p.star",
        "par": tmp_path / "p.par",
        "relion_star": tmp_path / "r.star",
        "positions": tmp_path / "picks.txt",
    }
    mrc.write(made["mrc"], np.zeros((4, 5, 6), np.float32), kind="volume",
              voxel_size_angstroms=2.5)
    tiff.write(made["tiff"], np.ones((3, 8, 9), np.uint8), pixel_size_angstroms=0.9)
    cistem_star.write(made["cistem_star"], _params())
    par.write(made["par"], _params())
    relion_star.write(made["relion_star"], _params(), image_names=["1@s", "2@s", "3@s"])
    positions.write(made["positions"], [positions.ParticlePosition(1, 2.0, 3.0),
                                        positions.ParticlePosition(2, 5.0, 1.0)])
    return made


def test_detects_and_describes_every_format(files: dict[str, Path]) -> None:
    for kind, path in files.items():
        described = info.describe(path)
        assert described["format"] == kind and described["path"] == str(path)
        json.dumps(described, allow_nan=False)
        text = info.format_description(described)
        assert text.splitlines()[0] == str(path)
    assert info.describe(files["mrc"])["voxel_size_angstroms"] == [2.5, 2.5, 2.5]
    assert info.describe(files["mrc"])["kind"] == "volume"
    described = info.describe(files["tiff"])
    assert (described["n_frames"], described["compression"]) == (3, "lzw")
    assert described["pixel_size_angstroms"] == pytest.approx(0.9)
    assert info.describe(files["cistem_star"])["n_particles"] == 3
    assert info.describe(files["cistem_star"])["ranges"]["defocus_1"] == [10000.0, 14000.0]
    assert info.describe(files["par"])["n_columns"] == 17
    assert info.describe(files["relion_star"])["optics_groups"][0]["voltage_kv"] == 300.0
    assert info.describe(files["positions"])["n_images"] == 2


def test_real_files() -> None:
    micrograph = info.describe(_need("real_micrographs", "fei-extended.mrc"))
    assert (micrograph["nx"], micrograph["ny"], micrograph["mode"]) == (3710, 3838, 6)
    assert micrograph["pixel_size_angstroms"] == pytest.approx(0.8538, abs=1e-4)
    assert micrograph["extended_header_type"] == "FEI1"
    text = info.format_description(micrograph)
    assert "3710 × 3838 × 1" in text and "FEI1" in text
    stack = info.describe(_need("particles", "relion31.mrcs"))
    assert stack["kind"] == "stack" and "no MAP word" in stack["notes"][0]
    relion = info.describe(_need("particles", "sample_particles_relion31.star"))
    assert relion["relion_version"] == "3.1" and relion["n_particles"] == 17
    assert len(relion["optics_groups"]) == 2
    assert "optics group 2" in info.format_description(relion)


def test_relion30_without_pixel_size_is_still_described(tmp_path: Path) -> None:
    path = tmp_path / "nopix.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnVoltage\n"
                    "_rlnSphericalAberration\n_rlnAmplitudeContrast\n1@s.mrcs 1 300 2.7 0.1\n")
    described = info.describe(path)
    assert described["n_particles"] == 1 and "no pixel size" in described["notes"][0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.bin", b"\x00\x01\x02\x03" * 10, "unrecognised binary file"),
        ("x.dat", b"", "empty file"),
        ("x.star", b"data_\nloop_\n_foo\n1\n", "neither _cisTEM nor _rln"),
        ("x.cistem", b"\x02\x00\x00\x00", "not supported"),
        ("x.mrc", b"\x00" * 2000, "not an MRC file"),
        ("x.dat", b"hello\n", "unrecognised file format"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        info.describe(path)


def test_main_text_json_and_exit_status(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert cistem_main(["info", str(files["mrc"]), str(files["tiff"])]) == 0
    out = capsys.readouterr().out
    assert "MRC mode 2 (float32), volume" in out and "TIFF, lzw compression" in out

    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"junk" * 300)
    assert cistem_main(["info", str(files["par"]), str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert results[0]["format"] == "par" and "error" in results[1]
    error_lines = captured.err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith(f"cistem info: {bad}: not an MRC file")


def test_cistem_info_runs_as_a_command(files: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", "info", "--json", str(files["positions"])],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["n_particles"] == 2


def test_importing_cistemd_io_stays_light() -> None:
    # Import hygiene: the package and the format modules import no heavy readers
    # until a function needs them.
    code = (
        "import sys\n"
        "import cistemd.io, cistemd.io.mrc, cistemd.io.tiff, cistemd.io.movie, "
        "cistemd.io.cistem_star, cistemd.io.par, cistemd.io.relion_star, "
        "cistemd.io.positions, cistemd.io.info\n"
        "heavy = [m for m in ('mrcfile', 'tifffile', 'imagecodecs', 'pandas', 'starfile',"
        " 'numba', 'gemmi') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    # `cistem info` builds its parser before any file is read: no numpy at import.
    light = subprocess.run(
        [sys.executable, "-c", "import sys, cistemd.io.info; print('numpy' in sys.modules)"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert light.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == ""
