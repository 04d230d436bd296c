"""TIFF movies: round trips (LZW as SerialEM writes it), pixel size, damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from cistemd.errors import InvalidInputError
from cistemd.io import tiff


def _frames(dtype: type, shape: tuple[int, ...] = (4, 48, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=shape).astype(dtype)
    # Sparse electron counts, like a counting-mode frame.
    return rng.poisson(0.8, size=shape).astype(dtype)


def test_imagecodecs_lzw_is_available() -> None:
    assert imagecodecs.LZW.available
    payload = b"abcabcabc" * 1000
    assert imagecodecs.lzw_decode(imagecodecs.lzw_encode(payload)) == payload


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("compression", ["lzw", "none", "zlib"])
def test_round_trip(tmp_path: Path, dtype: type, compression: str) -> None:
    frames = _frames(dtype)
    path = tmp_path / "movie.tif"
    tiff.write(path, frames, compression=compression, pixel_size_angstroms=1.06)
    header = tiff.read_header(path)
    assert (header.nx, header.ny, header.n_frames) == (40, 48, 4)
    assert header.dtype == np.dtype(dtype)
    assert header.compression == {"zlib": "adobe_deflate"}.get(compression, compression)
    assert header.pixel_size_angstroms == pytest.approx(1.06, rel=1e-9)
    back = tiff.read(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, frames)
    np.testing.assert_array_equal(tiff.read_frame(path, 2), frames[2])
    np.testing.assert_array_equal(tiff.read_frame(path, -1), frames[-1])


def test_one_page_per_frame_like_serialem(tmp_path: Path) -> None:
    frames = _frames(np.uint8, (3, 64, 64))
    path = tmp_path / "serialem.tif"
    tiff.write(path, frames)
    with tifffile.TiffFile(path) as handle:
        assert len(handle.pages) == 3
        assert all(page.compression == 5 for page in handle.pages)  # 5 = LZW
        assert handle.pages[0].shape == (64, 64)


def test_single_image_and_index_errors(tmp_path: Path) -> None:
    image = _frames(np.uint16, (20, 30))
    path = tmp_path / "one.tif"
    tiff.write(path, image)
    assert tiff.read(path).shape == (1, 20, 30)
    assert tiff.read_header(path).pixel_size_angstroms is None
    with pytest.raises(IndexError, match="out of range"):
        tiff.read_frame(path, 1)


def test_multi_strip_lzw_written_by_tifffile(tmp_path: Path) -> None:
    frames = _frames(np.int16, (5, 100, 64))
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, frames, compression="lzw", rowsperstrip=16, photometric="minisblack",
                     metadata=None)
    np.testing.assert_array_equal(tiff.read(path), frames)


def test_big_endian_tiff(tmp_path: Path) -> None:
    frames = _frames(np.uint16, (2, 10, 12))
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, frames, byteorder=">", photometric="minisblack", metadata=None)
    back = tiff.read(path)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, frames)
    assert tiff.read_header(path).byte_order == ">"


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [((1e8 / 0.83, 1e8 / 0.83), "CENTIMETER", 0.83), ((2.54e8, 2.54e8), "INCH", 1.0),
     ((72.0, 72.0), "INCH", None), ((5.0, 5.0), "NONE", None)],
)
def test_pixel_size_from_resolution_tags(tmp_path: Path, resolution, unit, expected) -> None:
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), resolution=resolution,
                     resolutionunit=unit, metadata=None)
    found = tiff.read_header(path).pixel_size_angstroms
    if expected is None:
        assert found is None
    else:
        assert found == pytest.approx(expected, rel=1e-6)


def test_pixel_size_from_imagej_unit(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 6), np.uint8), imagej=True,
                     resolution=(10.0, 10.0), metadata={"unit": "nm", "axes": "ZYX"})
    header = tiff.read_header(path)
    assert (header.n_frames, header.ny, header.nx) == (3, 8, 6)
    assert header.pixel_size_angstroms == pytest.approx(1.0)


def test_write_validation(tmp_path: Path) -> None:
    path = tmp_path / "v.tif"
    with pytest.raises(ValueError, match="dtype"):
        tiff.write(path, np.zeros((2, 2), np.complex64))
    with pytest.raises(ValueError, match="shape"):
        tiff.write(path, np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="pixel_size"):
        tiff.write(path, np.zeros((2, 2), np.uint8), pixel_size_angstroms=-1.0)
    tiff.write(path, np.zeros((2, 2), np.uint8))
    with pytest.raises(FileExistsError):
        tiff.write(path, np.zeros((2, 2), np.uint8), overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["v.tif"]


# -- damaged and unsuitable files ----------------------------------------------------------------


def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "x.tif"
    path.write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(InvalidInputError, match="not a TIFF file: bad magic"):
        tiff.read(path)
    path.write_bytes(b"II*")
    with pytest.raises(InvalidInputError, match="only 3 bytes"):
        tiff.read_header(path)
    with pytest.raises(InvalidInputError, match="no such file"):
        tiff.read(tmp_path / "missing.tif")


def test_truncated_movie_is_an_error_not_a_shorter_movie(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tiff.write(path, _frames(np.uint8, (5, 64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError) as caught:
        tiff.read(path)
    assert str(path) in str(caught.value)


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), metadata=None)
    tifffile.imwrite(path, np.zeros((4, 8), np.uint8), append=True, metadata=None)
    with pytest.raises(InvalidInputError, match="frame 2 is 8×4 uint8 but frame 1 is 8×8"):
        tiff.read_header(path)


def test_rgb_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(InvalidInputError, match="greyscale"):
        tiff.read(path)


def test_corrupt_lzw_strip(tmp_path: Path) -> None:
    path = tmp_path / "c.tif"
    tiff.write(path, _frames(np.uint8, (2, 64, 64)))
    with tifffile.TiffFile(path) as handle:
        offset = handle.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset + 5 : offset + 40] = b"\xff" * 35
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="cannot decode"):
        tiff.read(path)
    with pytest.raises(InvalidInputError, match="cannot decode frame 1"):
        tiff.read_frame(path, 0)


def test_absurd_dimensions_do_not_allocate(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    tiff.write(path, np.zeros((1, 16, 16), np.uint16))
    with tifffile.TiffFile(path) as handle:
        page = handle.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        tags = page.tags
        width_at = tags["ImageWidth"].valueoffset
        length_at = tags["ImageLength"].valueoffset
        rows_at = tags["RowsPerStrip"].valueoffset
        types = [tags[name].dtype for name in ("ImageWidth", "ImageLength", "RowsPerStrip")]
    data = bytearray(path.read_bytes())
    for at, tag_type in zip((width_at, length_at, rows_at), types, strict=True):
        fmt = "<H" if tag_type == 3 else "<I"
        data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, 60000)
    path.write_bytes(bytes(data))
    # 60000 × 60000 uint16 = 7.2 GB declared by a file of a few hundred bytes.
    with pytest.raises(InvalidInputError, match="refusing"):
        tiff.read(path)


def test_many_frames_sharing_pixel_data_are_refused(tmp_path: Path) -> None:
    # 40 IFDs all pointing at one compressed strip of a 4096 × 4096 frame: each page is
    # within the per-frame allowance, the movie as a whole is not.
    path = tmp_path / "shared.tif"
    frame = np.zeros((4096, 4096), np.uint8)
    with tifffile.TiffWriter(path) as writer:
        writer.write(frame, compression="lzw", photometric="minisblack", metadata=None)
    with tifffile.TiffFile(path) as handle:
        first = handle.pages[0]
        assert isinstance(first, tifffile.TiffPage)
        ifd_offset, next_pointer = first.offset, first.offset + 2 + 12 * len(first.tags)
        ifd = path.read_bytes()[ifd_offset:next_pointer]
    data = bytearray(path.read_bytes())
    copies = 40
    start = len(data)
    for k in range(copies):  # append copies of the IFD, each linking to the next
        here = start + k * (len(ifd) + 4)
        following = here + len(ifd) + 4 if k < copies - 1 else 0
        data += ifd + struct.pack("<I", following)
    data[next_pointer:next_pointer + 4] = struct.pack("<I", start)
    path.write_bytes(bytes(data))
    assert tiff.MAX_COMPRESSION_RATIO * len(data) < 41 * frame.nbytes
    with pytest.raises(InvalidInputError, match="would decode to"):
        tiff.read(path)
