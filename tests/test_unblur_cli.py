"""``cistem unblur``: outputs, JSON, sign of the shifts, TIFF input (no SampleFormat tag),
errors, and the real data at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cistemd.cli.main import main
from cistemd.io import mrc
from cistemd.kernels import fourier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIV_STACK = SHARED / "cistem_console_test" / "hiv_images_shift_noise_80x80x10.mrc"
REAL_MICROGRAPH = SHARED / "real_micrographs" / "fei-extended.mrc"


def _movie(n_frames: int = 10, size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts of a smooth texture drifting by +drift[i] (Å = px here)."""
    rng = np.random.default_rng(seed)
    texture = fourier.fourier_crop(rng.normal(size=(4 * size, 4 * size)), (size, size))
    texture = 1.0 + 0.6 * texture / texture.std()
    drift = np.column_stack([np.linspace(0.0, 7.0, n_frames), np.linspace(0.0, -3.0, n_frames)])
    frames = np.stack([
        rng.poisson(np.clip(20.0 * fourier.fourier_shift(texture, drift[i]), 0, None))
        for i in range(n_frames)
    ]).astype(np.uint16)  # fmt: skip
    return frames, drift


def _run_json(capsys, *argv: str) -> dict:
    assert main(["unblur", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_unblur_writes_the_sum_spectrum_scaled_sum_and_shift_file(tmp_path, capsys):
    frames, drift = _movie()
    movie = tmp_path / "movie.mrc"
    mrc.write(movie, frames, voxel_size_angstroms=1.0, kind="stack")
    out = tmp_path / "sum.mrc"
    result = _run_json(
        capsys, str(movie), "--output", str(out), "--pixel-size", "2.0",
        "--exposure-per-frame", "2", "--voltage", "200", "--spectrum", str(tmp_path / "spec.mrc"),
        "--scaled-sum", str(tmp_path / "small.mrc"), "--shifts-file", str(tmp_path / "s.txt"),
        "--threads", "1",
    )  # fmt: skip
    assert len(result["shifts_x"]) == len(result["shifts_y"]) == 10
    expected_x = -(drift[:, 0] - drift[5, 0]) * 2.0  # Å at 2 Å/px, applied to each frame
    np.testing.assert_allclose(result["shifts_x"], expected_x, atol=0.8)
    assert result["shifts_x"][5] == 0.0 and "applied" in result["shift_convention"]
    summed = mrc.read(out)
    assert summed.shape == (192, 192) and summed.dtype == np.float32
    assert mrc.read_header(out).voxel_size_angstroms[0] == pytest.approx(2.0)
    assert mrc.read(tmp_path / "spec.mrc").shape == (512, 512)
    assert mrc.read(tmp_path / "small.mrc").shape == (192, 192)
    table = np.loadtxt(tmp_path / "s.txt")
    np.testing.assert_allclose(table[:, 0], result["shifts_x"], atol=1e-3)


def test_tiff_without_sampleformat_tag_gives_the_same_result_as_mrc(tmp_path, capsys):
    import tifffile

    frames, _ = _movie(n_frames=8, size=160, seed=1)
    tiff_path = tmp_path / "movie.tif"
    tifffile.imwrite(tiff_path, frames, compression="lzw", photometric="minisblack")
    with tifffile.TiffFile(tiff_path) as handle:
        assert len(handle.pages) == 8
        assert all(339 not in page.tags for page in handle.pages)  # no SampleFormat tag
    mrc_path = tmp_path / "movie.mrc"
    mrc.write(mrc_path, frames, kind="stack")
    args = ("--pixel-size", "1.5", "--exposure-per-frame", "1.5", "--threads", "1")
    from_tiff = _run_json(capsys, str(tiff_path), "-o", str(tmp_path / "a.mrc"), *args)
    from_mrc = _run_json(capsys, str(mrc_path), "-o", str(tmp_path / "b.mrc"), *args)
    assert from_tiff["shifts_x"] == pytest.approx(from_mrc["shifts_x"], abs=1e-4)
    np.testing.assert_allclose(mrc.read(tmp_path / "a.mrc"), mrc.read(tmp_path / "b.mrc"))


def test_gain_reference_and_output_pixel_size(tmp_path, capsys):
    frames, _ = _movie(n_frames=6, size=128, seed=2)
    movie = tmp_path / "movie.mrc"
    mrc.write(movie, frames, kind="stack")
    gain = tmp_path / "gain.mrc"
    mrc.write(gain, np.full((128, 128), 0.5, np.float32))
    result = _run_json(
        capsys, str(movie), "-o", str(tmp_path / "sum.mrc"), "--pixel-size", "1.0",
        "--exposure-per-frame", "1", "--gain", str(gain), "--output-pixel-size", "2.0",
        "--no-exposure-filter", "--threads", "1",
    )  # fmt: skip
    assert result["output_pixel_size_angstroms"] == pytest.approx(2.0)
    summed = mrc.read(tmp_path / "sum.mrc")
    assert summed.shape == (64, 64)
    assert summed.mean() == pytest.approx(0.5 * frames.sum(axis=0).mean(), rel=1e-3)


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    frames, _ = _movie(n_frames=3, size=80)
    movie = tmp_path / "tiny.mrc"
    mrc.write(movie, frames, kind="stack")
    status = main([
        "unblur", str(movie), "-o", str(tmp_path / "s.mrc"), "--pixel-size", "0.5",
        "--exposure-per-frame", "1",
    ])  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2
    assert "tiny.mrc" in error and "too small" in error and "8×8" in error
    status = main([
        "unblur", str(movie), "-o", str(tmp_path / "s.mrc"), "--pixel-size", "1",
        "--exposure-per-frame", "1", "--voltage", "120",
    ])  # fmt: skip
    assert status == 2 and "300, 200 or 100" in capsys.readouterr().err
    status = main([
        "unblur", str(tmp_path / "missing.mrc"), "-o", str(tmp_path / "s.mrc"),
        "--pixel-size", "1", "--exposure-per-frame", "1",
    ])  # fmt: skip
    assert status == 2 and "missing.mrc" in capsys.readouterr().err
    status = main([
        "unblur", str(movie), "-o", str(tmp_path / "s.mrc"), "--pixel-size", "1",
        "--exposure-per-frame", "1", "--last-frame", "5",
    ])  # fmt: skip
    assert status == 2 and "frames to sum" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not HIV_STACK.exists(), reason="shared console-test data not present")
def test_cistem_console_test_stack_is_stable_between_runs(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    runs = []
    for threads in ("1", "2"):
        completed = subprocess.run(
            [sys.executable, "-m", "cistemd.cli.main", "unblur", str(HIV_STACK), "-o",
             str(tmp_path / f"hiv_{threads}.mrc"), "--pixel-size", "1.0",
             "--exposure-per-frame", "1.0", "--threads", threads, "--json"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        runs.append(json.loads(completed.stdout))
    first, second = runs
    assert len(first["shifts_x"]) == 10
    np.testing.assert_allclose(first["shifts_x"], second["shifts_x"], atol=0.1)
    np.testing.assert_allclose(first["shifts_y"], second["shifts_y"], atol=0.1)
    assert max(np.abs(first["shifts_x"]).max(), np.abs(first["shifts_y"]).max()) < 15.0
    summed = mrc.read(tmp_path / "hiv_1.mrc")
    assert summed.shape == (80, 80) and np.all(np.isfinite(summed))


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MICROGRAPH.exists(), reason="shared real micrograph not present")
def test_real_single_frame_micrograph_runs(tmp_path, capsys):
    result = _run_json(
        capsys, str(REAL_MICROGRAPH), "-o", str(tmp_path / "sum.mrc"),
        "--exposure-per-frame", "1", "--threads", "2",
    )  # fmt: skip — pixel size from the header
    assert result["n_frames"] == 1 and result["shifts_x"] == [0.0]
    assert result["pixel_size_angstroms"] == pytest.approx(0.8538, abs=1e-3)
    raw = mrc.read(REAL_MICROGRAPH).astype(np.float64)
    summed = mrc.read(tmp_path / "sum.mrc")
    # one frame: the "sum" is the exposure-filtered frame; its mean is untouched
    assert summed.mean() == pytest.approx(raw.mean(), rel=1e-3)


def test_help_lists_unblur_and_documents_the_sign():
    completed = subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", "unblur", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0
    assert "APPLIED to each frame" in completed.stdout
    assert "--no-exposure-filter" in completed.stdout


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_movie_reader_takes_tiffs_without_sampleformat_as_unsigned(tmp_path, dtype):
    import tifffile

    from cistemd.io.movie import open_movie

    frames = np.random.default_rng(3).integers(0, 200, size=(3, 40, 48)).astype(dtype)
    path = tmp_path / "counts.tif"
    tifffile.imwrite(path, frames, compression="lzw", photometric="minisblack")
    with tifffile.TiffFile(path) as handle:
        assert 339 not in handle.pages[0].tags  # the TIFF default: unsigned integers
    with open_movie(path) as movie:
        assert len(movie) == 3 and movie.header.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.stack(list(movie)), frames.astype(np.float32))
