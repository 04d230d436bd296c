"""``cistem ctffind`` and CTFFIND's text formats (cistemd.io.ctffind_text)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import ctffind_text, mrc
from cistemd.kernels.ctf import CTFParams, ctf_2d

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_micrographs"


def ring_image(path: Path, truth: CTFParams, *, pixel: float = 1.5, size: int = 1024) -> None:
    rng = np.random.default_rng(1)
    transfer = ctf_2d((size, size), pixel, truth, envelope_b_factor_angstroms2=60.0, rfft=True)
    signal = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * transfer)
    image = (signal + rng.standard_normal((size, size)) + 10.0).astype(np.float32)
    mrc.write(path, image, voxel_size_angstroms=pixel)


def cistem(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CISTEM_HOME": os.environ.get("CISTEM_HOME", "/nonexistent")},
    )


TRUTH = CTFParams(
    defocus_1_angstroms=16000.0, defocus_2_angstroms=15200.0, astigmatism_angle_degrees=-30.0
)


@pytest.fixture(scope="module")
def ring_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctffind") / "rings.mrc"
    ring_image(path, TRUTH)
    return path


def test_cli_json_and_outputs(ring_file, tmp_path):
    diagnostic = tmp_path / "out" / "diag.mrc"
    diagnostic.parent.mkdir()
    completed = cistem(
        "ctffind", str(ring_file), "--pixel-size", "1.5", "--diagnostic", str(diagnostic),
        "--json",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("defocus_1", "defocus_2", "astigmatism_angle", "phase_shift", "score",
                "fit_resolution"):  # fmt: skip
        assert isinstance(result[key], float)
    mean = 0.5 * (result["defocus_1"] + result["defocus_2"])
    assert abs(mean - TRUTH.mean_defocus_angstroms) < 50.0
    assert result["defocus_1"] >= result["defocus_2"]
    assert result["confident"] is True
    image = mrc.read(diagnostic)
    assert image.shape == (512, 512)
    rows = ctffind_text.read_results(diagnostic.with_suffix(".txt"))
    assert len(rows) == 1
    assert rows[0]["defocus_1"] == pytest.approx(result["defocus_1"], abs=1e-3)
    assert rows[0]["fit_resolution"] == pytest.approx(result["fit_resolution"], abs=1e-3)
    curves = ctffind_text.read_avrot(tmp_path / "out" / "diag_avrot.txt")
    assert len(curves) == 1 and set(curves[0]) == set(ctffind_text.AVROT_LINES)
    assert curves[0]["spatial_frequency"].size == 256


def test_cli_text_output_and_default_diagnostic_name(ring_file, capsys):
    import argparse

    from cistemd.cli.commands import ctffind as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    status = command.run(
        parser.parse_args([str(ring_file), "--pixel-size", "1.5", "--max-res", "6"])
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "defocus 1" in out and "Thon rings fit to" in out
    assert ring_file.with_name("rings_ctffind.mrc").exists()
    assert ring_file.with_name("rings_ctffind_avrot.txt").exists()


def test_cli_bad_input_exits_2(tmp_path):
    missing = cistem("ctffind", str(tmp_path / "nope.mrc"), "--pixel-size", "1")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"not an mrc file" * 10)
    bad = cistem("ctffind", str(junk), "--pixel-size", "1")
    assert bad.returncode == 2 and "junk.mrc" in bad.stderr
    assert "\n" not in bad.stderr.strip()


def test_results_round_trip_and_classic_seven_columns(tmp_path):
    path = tmp_path / "r.txt"
    rows = [
        {"defocus_1": 15000.5, "defocus_2": 14000.25, "astigmatism_angle": 12.5,
         "phase_shift": 0.5, "score": 0.2, "fit_resolution": 4.5},
    ]  # fmt: skip
    ctffind_text.write_results(path, rows, input_file="x.mrc", settings={"pixel_size": 1.0})
    text = path.read_text()
    assert text.startswith("# Output from")
    data = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(data[0].split()) == 10
    back = ctffind_text.read_results(path)
    assert back[0]["micrograph_number"] == 1.0
    assert back[0]["defocus_2"] == pytest.approx(14000.25)
    classic = tmp_path / "classic.txt"
    classic.write_text("# CTFFIND 4.1\n1.000000 10000.0 9000.0 -45.0 0.0 0.15 3.9\n")
    assert ctffind_text.read_results(classic)[0]["sample_thickness"] == 0.0
    broken = tmp_path / "broken.txt"
    broken.write_text("1 2 3\n")
    with pytest.raises(InvalidInputError, match="7 or 10"):
        ctffind_text.read_results(broken)


def test_avrot_round_trip_and_errors(tmp_path):
    path = tmp_path / "a_avrot.txt"
    curves = {key: np.linspace(0, 1, 7) * (i + 1) for i, key in enumerate(ctffind_text.AVROT_LINES)}
    ctffind_text.write_avrot(path, [curves, curves])
    back = ctffind_text.read_avrot(path)
    assert len(back) == 2
    np.testing.assert_allclose(back[1]["ctf_fit"], curves["ctf_fit"], atol=1e-6)
    bad = tmp_path / "bad_avrot.txt"
    bad.write_text("1 2 3\n" * 5)
    with pytest.raises(InvalidInputError, match="6 lines"):
        ctffind_text.read_avrot(bad)
    nan = tmp_path / "nan.txt"
    nan.write_text("1 nan 3 4 5 6 7\n")
    with pytest.raises(InvalidInputError, match="non-finite"):
        ctffind_text.read_results(nan)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} is absent")
@pytest.mark.parametrize(
    ("name", "pixel", "low", "high"),
    [
        ("fei-extended.mrc", 0.8538, 10000.0, 11200.0),
        ("epu2.9_example.mrc", 0.6666, 22000.0, 29000.0),
    ],
)
def test_real_micrographs_give_confident_fits(name, pixel, low, high, tmp_path):
    """Real 300 kV micrographs: confident, rings to better than 5 Å, defocus plausible.

    fei-extended: independent fits 10,500–10,700 Å (data README); epu2.9:
    nominal 22,000 Å, independent fits disagree (23,500–27,500 Å).
    """
    completed = cistem(
        "ctffind", str(REAL / name), "--pixel-size", str(pixel),
        "--diagnostic", str(tmp_path / "d.mrc"), "--json",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    mean = 0.5 * (result["defocus_1"] + result["defocus_2"])
    assert result["confident"], result["warnings"]
    assert result["fit_resolution"] < 5.0
    assert low <= mean <= high
    assert math.isfinite(result["score"]) and result["score"] > 0.05
