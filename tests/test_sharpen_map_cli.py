"""``cistem sharpen-map`` end to end (in process, plus one real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cistemd.cli.commands import sharpen_map as command
from cistemd.cli.main import build_parser, main
from cistemd.io import mrc
from cistemd.io.statistics import ResolutionStatistics, write_statistics
from cistemd.kernels import simulate
from cistemd.kernels.sharpen import apply_b_factor, invert_hand, radial_amplitude_spectrum

PIXEL = 2.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharpen_cli")
    model = simulate.asymmetric_protein_model(seed=0)
    truth = simulate.coulomb_potential_map(model, box=64, pixel_size_angstroms=PIXEL)
    blurred = apply_b_factor(truth, PIXEL, 100.0)
    mrc.write(root / "truth.mrc", truth, voxel_size_angstroms=PIXEL, kind="volume")
    mrc.write(root / "blurred.mrc", blurred, voxel_size_angstroms=PIXEL, kind="volume")
    shell = np.arange(1, 46)
    ssnr = 40.0 * np.exp(-shell / 7.0)
    fsc = ssnr / (2 + ssnr)
    stats = ResolutionStatistics(
        pixel_size_angstroms=PIXEL, box_size=64, shell=shell, fsc=fsc, part_fsc=fsc,
        part_ssnr=ssnr, rec_ssnr=ssnr,
    )  # fmt: skip
    write_statistics(root / "stats.txt", stats)
    return {"root": root, "truth": truth, "stats": stats}


def test_command_interface():
    assert command.NAME == "sharpen-map"
    assert command.HELP and "\n" not in command.HELP
    parser = build_parser()
    args = parser.parse_args(["sharpen-map", "in.mrc", "-o", "out.mrc"])
    # cisTEM sharpen_map program defaults
    assert args.flatten_from == 8.0 and args.resolution_limit == 3.0
    assert args.pre_b == 0.0 and args.post_b == 0.0 and args.filter_edge == 20.0
    assert args.outer_mask_radius == 100.0 and args.inner_mask_radius == 0.0
    assert args.ssnr_scale == 1.0 and not args.invert_hand and not args.auto_mask


def test_sharpen_restores_a_blurred_map(files, tmp_path, capsys):
    out = tmp_path / "sharp.mrc"
    orth = tmp_path / "orth.mrc"
    status = main(
        [
            "sharpen-map", str(files["root"] / "blurred.mrc"), "--output", str(out),
            "--pre-b", "-100", "--flatten-from", "4", "--resolution-limit", "5",
            "--orth-view", str(orth), "--json",
        ]
    )  # fmt: skip
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(out) and summary["box_size"] == 64
    assert summary["pixel_size_angstroms"] == PIXEL  # from the header
    assert summary["resolution_limit_angstroms"] == 5.0 and summary["fom_weighting"] is False
    sharp = mrc.read(out)
    assert mrc.read_header(out).voxel_size_angstroms[0] == pytest.approx(PIXEL)
    shells, a_truth = radial_amplitude_spectrum(files["truth"])
    _, a_sharp = radial_amplitude_spectrum(sharp)
    below = (shells > 0) & (shells <= PIXEL / 5 - PIXEL / 20)
    np.testing.assert_allclose(a_sharp[below] / a_truth[below], 1.0, atol=0.05)
    spectrum = summary["spectrum"]
    assert len(spectrum["spatial_frequency_per_angstrom"]) == 33
    assert len(spectrum["original_amplitude"]) == len(spectrum["sharpened_amplitude"]) == 33
    assert mrc.read(orth).shape == (64, 192)


def test_statistics_give_fom_and_cut_off(files, tmp_path, capsys):
    out = tmp_path / "fom.mrc"
    status = main(
        [
            "sharpen-map", str(files["root"] / "truth.mrc"), "-o", str(out),
            "--statistics", str(files["root"] / "stats.txt"), "--resolution-limit", "0",
            "--flatten-from", "4", "--json",
        ]
    )  # fmt: skip
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fom_weighting"] is True
    expected = files["stats"].resolution_at(0.143)
    assert summary["resolution_limit_angstroms"] == pytest.approx(expected, rel=1e-3)
    filt = np.array(summary["spectrum"]["filter"])
    shells = np.arange(33)
    ssnr = 40.0 * np.exp(-shells[1:10] / 7.0)
    np.testing.assert_allclose(filt[1:10], ssnr / (1 + ssnr), rtol=0.01)
    # --no-use-statistics: statistics only for the cut-off
    status = main(
        [
            "sharpen-map", str(files["root"] / "truth.mrc"), "-o", str(tmp_path / "b.mrc"),
            "--statistics", str(files["root"] / "stats.txt"), "--no-use-statistics", "--json",
        ]
    )  # fmt: skip
    assert status == 0
    assert json.loads(capsys.readouterr().out)["fom_weighting"] is False


def test_hand_mask_and_plain_output(files, tmp_path, capsys):
    plain = tmp_path / "plain.mrc"
    flipped = tmp_path / "flipped.mrc"
    mask = tmp_path / "mask.mrc"
    box = np.zeros((64, 64, 64), np.float32)
    box[12:52, 12:52, 12:52] = 1.0
    mrc.write(mask, box, voxel_size_angstroms=PIXEL, kind="volume")
    common = [str(files["root"] / "truth.mrc"), "--mask", str(mask), "--mask-edge", "6"]
    assert main(["sharpen-map", *common, "-o", str(plain)]) == 0
    text = capsys.readouterr().out
    assert "sharpened" in text and "mask user" in text
    assert main(["sharpen-map", *common, "-o", str(flipped), "--invert-hand"]) == 0
    np.testing.assert_allclose(mrc.read(flipped), invert_hand(mrc.read(plain)), atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ssnr-scale", "20"], "ssnr-scale"),
        (["--resolution-limit", "-1"], "resolution-limit"),
        (["--statistics", "missing_stats.txt"], "missing_stats.txt"),
        (["--mask", "missing_mask.mrc"], "missing_mask.mrc"),
        (["--flatten-from", "0"], "flatten_from"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(files, tmp_path, capsys, extra, message):
    status = main(
        ["sharpen-map", str(files["root"] / "truth.mrc"), "-o", str(tmp_path / "x.mrc"), *extra]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_non_cubic_and_2d_inputs_rejected(tmp_path, capsys):
    flat = tmp_path / "image.mrc"
    mrc.write(flat, np.zeros((16, 16), np.float32), voxel_size_angstroms=1.0)
    assert main(["sharpen-map", str(flat), "-o", str(tmp_path / "o.mrc")]) == 2
    assert "cubic" in capsys.readouterr().err


def test_real_subprocess(files, tmp_path):
    out = tmp_path / "sub.mrc"
    completed = subprocess.run(
        [sys.executable, "-m", "cistemd.cli.main", "sharpen-map",
         str(files["root"] / "blurred.mrc"), "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert len(completed.stdout.strip().splitlines()) == 1
    assert json.loads(completed.stdout)["output"] == str(out)
    assert out.exists()
