"""The bounds-checked TIFF LZW decoder that replaces imagecodecs' for reading."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from cistemd.errors import InvalidInputError
from cistemd.io import tiff
from cistemd.io._lzw import LZW_CORRUPT, lzw_decode_into


def _decode(encoded: bytes, size: int) -> tuple[int, np.ndarray]:
    out = np.zeros(size, dtype=np.uint8)
    return lzw_decode_into(np.frombuffer(encoded, dtype=np.uint8), out), out


@pytest.mark.parametrize(
    "data",
    [
        np.zeros(1, np.uint8),
        np.arange(256, dtype=np.uint8),
        np.full(100_000, 7, np.uint8),  # long runs: KwKwK codes, wide codes, table resets
        np.random.default_rng(1).integers(0, 256, 70_000, dtype=np.uint8),  # many Clear codes
        np.random.default_rng(2).poisson(0.8, 300_000).astype(np.uint8),  # counting-mode frame
    ],
    ids=["one-byte", "ramp", "runs", "random", "poisson"],
)
def test_decodes_what_the_reference_encoder_wrote(data):
    written, out = _decode(imagecodecs.lzw_encode(data.tobytes()), data.size)
    assert written == data.size
    np.testing.assert_array_equal(out, data)


def test_stops_when_the_output_is_full():
    data = np.random.default_rng(3).integers(0, 4, 5000, dtype=np.uint8)
    written, out = _decode(imagecodecs.lzw_encode(data.tobytes()), 1234)
    assert written == 1234
    np.testing.assert_array_equal(out, data[:1234])


def test_a_code_beyond_the_table_is_corrupt():
    # 9-bit codes: 'A' (65) then 300, which is not yet in the table (next free is 258).
    bits = f"{65:09b}{300:09b}{257:09b}"
    bits += "0" * (-len(bits) % 8)
    encoded = int(bits, 2).to_bytes(len(bits) // 8, "big")
    written, _ = _decode(encoded, 10)
    assert written == LZW_CORRUPT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=5000))
def test_arbitrary_bytes_never_escape_the_buffers(data, size):
    written, _ = _decode(data, size)
    assert written == LZW_CORRUPT or 0 <= written <= size


def test_tiff_reader_uses_the_safe_decoder_and_reports_damage(tmp_path):
    frames = np.random.default_rng(4).poisson(1.0, (3, 64, 48)).astype(np.uint8)
    path = tmp_path / "movie.tif"
    tiff.write(path, frames, compression="lzw")
    np.testing.assert_array_equal(tiff.read(path), frames)
    assert tifffile.TIFF.DECOMPRESSORS[5] is tiff._lzw_decode

    with tifffile.TiffFile(path) as opened:
        offset = opened.pages[1].dataoffsets[0]
    damaged = bytearray(path.read_bytes())
    damaged[offset : offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(damaged))
    with pytest.raises(InvalidInputError, match=r"movie\.tif"):
        tiff.read(path)
