"""Streaming movie access with gain/dark correction, from MRC stacks and TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import mrc, tiff
from cistemd.io.movie import (
    GainTransform,
    MovieReader,
    open_movie,
    read_gain_reference,
    read_movie_header,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

NY, NX, N_FRAMES = 6, 10, 5


def _pixel_image(x: int, y: int, ny: int = 7, nx: int = 7) -> np.ndarray:
    image = np.zeros((ny, nx), np.float32)
    image[y, x] = 1.0
    return image


def _where(image: np.ndarray) -> tuple[int, int]:
    y, x = np.argwhere(image == 1.0)[0]
    return int(x), int(y)


# -- GainTransform ---------------------------------------------------------------------------------


def test_counter_clockwise_quarter_turn_with_y_up() -> None:
    # Centre (3, 3); a pixel at +x (x=5, y=3) must go to +y (x=3, y=5).
    turned = GainTransform(rotate_quarter_turns=1).apply(_pixel_image(5, 3))
    assert _where(turned) == (3, 5)
    # And +y goes to -x.
    assert _where(GainTransform(1).apply(_pixel_image(3, 5))) == (1, 3)


@pytest.mark.parametrize("turns", range(-5, 9))
def test_rotations_compose_modulo_four(turns: int) -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    once = GainTransform(turns).apply(image)
    back = GainTransform(-turns).apply(once)
    np.testing.assert_array_equal(back, image)
    assert once.shape == ((3, 4) if turns % 2 == 0 else (4, 3))
    np.testing.assert_array_equal(GainTransform(turns + 4).apply(image), once)


def test_flips_and_order() -> None:
    assert _where(GainTransform(flip="x").apply(_pixel_image(5, 2))) == (1, 2)
    assert _where(GainTransform(flip="y").apply(_pixel_image(5, 2))) == (5, 4)
    # Rotate first, then flip: (5, 3) -> (3, 5) -> flip y -> (3, 1).
    assert _where(GainTransform(1, "y").apply(_pixel_image(5, 3))) == (3, 1)
    assert GainTransform().is_identity and GainTransform(4).is_identity
    assert not GainTransform(0, "x").is_identity
    with pytest.raises(ValueError, match="flip"):
        GainTransform(flip="z")


# -- references and movies -------------------------------------------------------------------------


@pytest.fixture
def frames() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.poisson(2.0, size=(N_FRAMES, NY, NX)).astype(np.uint16)


@pytest.fixture
def gain() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.uniform(0.8, 1.2, size=(NY, NX)).astype(np.float32)


@pytest.fixture(params=["mrc", "tiff"])
def movie_path(request: pytest.FixtureRequest, tmp_path: Path, frames: np.ndarray) -> Path:
    if request.param == "mrc":
        path = tmp_path / "movie.mrcs"
        mrc.write(path, frames, voxel_size_angstroms=1.1)
    else:
        path = tmp_path / "movie.tif"
        tiff.write(path, frames, pixel_size_angstroms=1.1)
    return path


def test_header(movie_path: Path, frames: np.ndarray) -> None:
    header = read_movie_header(movie_path)
    assert header.format == ("mrc" if movie_path.suffix == ".mrcs" else "tiff")
    assert (header.nx, header.ny, header.n_frames) == (NX, NY, N_FRAMES)
    assert header.dtype == np.uint16
    assert header.pixel_size_angstroms == pytest.approx(1.1)


def test_frames_without_references(movie_path: Path, frames: np.ndarray) -> None:
    with open_movie(movie_path) as movie:
        assert len(movie) == N_FRAMES and movie.shape == (NY, NX)
        first = movie.frame(0)
        assert first.dtype == np.float32
        np.testing.assert_array_equal(first, frames[0])
        np.testing.assert_array_equal(movie.raw_frame(-1), frames[-1])
        stacked = np.stack(list(movie))
    np.testing.assert_array_equal(stacked, frames.astype(np.float32))


@pytest.mark.parametrize("reference_format", ["array", "mrc", "tiff"])
def test_gain_and_dark_applied(
    tmp_path: Path, movie_path: Path, frames: np.ndarray, gain: np.ndarray, reference_format: str
) -> None:
    dark = np.full((NY, NX), 0.5, np.float32)
    gain_ref: object = gain
    dark_ref: object = dark
    if reference_format == "mrc":
        mrc.write(tmp_path / "gain.mrc", gain)
        mrc.write(tmp_path / "dark.mrc", dark)
        gain_ref, dark_ref = tmp_path / "gain.mrc", str(tmp_path / "dark.mrc")
    elif reference_format == "tiff":
        tiff.write(tmp_path / "gain.tif", gain, compression="none")
        tiff.write(tmp_path / "dark.tif", dark)
        gain_ref, dark_ref = tmp_path / "gain.tif", tmp_path / "dark.tif"
    with open_movie(movie_path, gain=gain_ref, dark=dark_ref) as movie:
        for index in range(N_FRAMES):
            expected = (frames[index].astype(np.float32) - dark) * gain
            np.testing.assert_allclose(movie.frame(index), expected, rtol=1e-6)


def test_gain_transform_brings_reference_onto_frames(
    tmp_path: Path, movie_path: Path, frames: np.ndarray, gain: np.ndarray
) -> None:
    # A camera that stored its gain reference turned a quarter clockwise, then mirrored in x.
    stored = GainTransform(rotate_quarter_turns=-1, flip="x").apply(gain)
    assert stored.shape == (NX, NY)
    mrc.write(tmp_path / "gain.mrc", stored)
    # Undo: mirror x, then turn counter-clockwise == turn counter-clockwise, then mirror y.
    undo = GainTransform(rotate_quarter_turns=1, flip="y")
    np.testing.assert_array_equal(read_gain_reference(tmp_path / "gain.mrc", transform=undo), gain)
    with open_movie(movie_path, gain=tmp_path / "gain.mrc", gain_transform=undo) as movie:
        np.testing.assert_allclose(movie.frame(1), frames[1] * gain, rtol=1e-6)
    with pytest.raises(InvalidInputError) as caught:
        open_movie(movie_path, gain=tmp_path / "gain.mrc")
    message = str(caught.value)
    assert str(tmp_path / "gain.mrc") in message and str(movie_path) in message
    assert f"{NY}×{NX}" in message and f"{NX}×{NY}" in message


def test_shape_mismatch_names_both_files(tmp_path: Path, movie_path: Path) -> None:
    mrc.write(tmp_path / "dark.mrc", np.zeros((NY + 1, NX), np.float32))
    with pytest.raises(InvalidInputError) as caught:
        MovieReader(movie_path, dark=tmp_path / "dark.mrc")
    assert str(tmp_path / "dark.mrc") in str(caught.value)
    assert str(movie_path) in str(caught.value)


def test_bad_references(tmp_path: Path, movie_path: Path) -> None:
    mrc.write(tmp_path / "stack.mrc", np.ones((2, NY, NX), np.float32))
    with pytest.raises(InvalidInputError, match="single image"):
        read_gain_reference(tmp_path / "stack.mrc")
    bad = np.ones((NY, NX), np.float32)
    bad[2, 3] = np.nan
    mrc.write(tmp_path / "nan.mrc", bad)
    with pytest.raises(InvalidInputError, match="non-finite"):
        open_movie(movie_path, gain=tmp_path / "nan.mrc")
    with pytest.raises(InvalidInputError, match="no such file"):
        open_movie(movie_path, gain=tmp_path / "missing.mrc")
    (tmp_path / "text.mrc").write_text("not an image")
    with pytest.raises(InvalidInputError):
        read_gain_reference(tmp_path / "text.mrc")


def test_not_a_movie(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidInputError, match="neither an MRC nor a TIFF"):
        open_movie(path)


def test_real_console_test_stack_as_a_movie() -> None:
    path = DATA / "cistem_console_test" / "hiv_images_shift_noise_80x80x10.mrc"
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    reference = mrc.read(path)
    with open_movie(path, gain=np.full((80, 80), 2.0, np.float32)) as movie:
        assert len(movie) == 10 and movie.pixel_size_angstroms is None
        np.testing.assert_allclose(movie.frame(7), 2.0 * reference[7], rtol=1e-6)
