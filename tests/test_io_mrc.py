"""MRC reading and writing: round trips, header checks, real files.

The behaviour tests live in ``MrcReadBehaviour`` and run twice, once reading
into memory and once memory-mapped (mrcfile's ``MrcMemmapTest(MrcFileTest)``
arrangement).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io import mrc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need_data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


MODES = {
    0: np.int8,
    1: np.int16,
    2: np.float32,
    4: np.complex64,
    6: np.uint16,
    12: np.float16,
}


def _sample(dtype: type, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _patch(path: Path, offset: int, fmt: str, *values: object) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(struct.pack(fmt, *values))


class MrcReadBehaviour:
    """Read behaviour shared by every reading strategy."""

    mmap: bool = False

    def read(self, path: Path, **kwargs: object) -> np.ndarray:
        return mrc.read(path, mmap=self.mmap, **kwargs)  # type: ignore[arg-type]

    def check_strategy(self, data: np.ndarray) -> None:
        assert isinstance(data, np.memmap) is self.mmap

    @pytest.mark.parametrize("mode", sorted(MODES))
    @pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5)])
    def test_round_trip_every_mode(self, tmp_path: Path, mode: int, shape: tuple) -> None:
        data = _sample(MODES[mode], shape, seed=mode)
        path = tmp_path / "x.mrc"
        mrc.write(path, data, voxel_size_angstroms=1.5)
        back = self.read(path)
        self.check_strategy(back)
        assert back.dtype == np.dtype(MODES[mode])
        assert back.shape == shape
        np.testing.assert_array_equal(back, data)
        header = mrc.read_header(path)
        assert header.mode == mode
        assert header.voxel_size_angstroms == pytest.approx((1.5, 1.5, 1.5))

    @pytest.mark.parametrize(
        ("shape", "kind", "expected_kind", "ispg"),
        [
            ((4, 6), None, "image", 0),
            ((3, 4, 6), None, "stack", 0),
            ((3, 4, 6), "stack", "stack", 0),
            ((3, 4, 6), "volume", "volume", 1),
        ],
    )
    def test_kinds(self, tmp_path: Path, shape, kind, expected_kind, ispg) -> None:
        path = tmp_path / "k.mrc"
        mrc.write(path, np.ones(shape, np.float32), kind=kind, voxel_size_angstroms=(1.0, 2.0, 3.0))
        header = mrc.read_header(path)
        assert header.kind == expected_kind
        assert header.space_group == ispg
        assert header.voxel_size_angstroms == pytest.approx((1.0, 2.0, 3.0))
        assert self.read(path).shape == shape

    def test_header_statistics_written(self, tmp_path: Path) -> None:
        data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        path = tmp_path / "s.mrc"
        mrc.write(path, data)
        header = mrc.read_header(path)
        assert (header.minimum, header.maximum) == (0.0, 23.0)
        assert header.mean == pytest.approx(11.5)
        assert header.rms == pytest.approx(data.std(), rel=1e-5)

    def test_read_slice_matches_full_read(self, tmp_path: Path) -> None:
        data = _sample(np.int16, (5, 6, 7))
        path = tmp_path / "s.mrc"
        mrc.write(path, data)
        for index in (0, 3, -1):
            np.testing.assert_array_equal(mrc.read_slice(path, index), data[index])
        with pytest.raises(IndexError, match="out of range"):
            mrc.read_slice(path, 5)

    def test_big_endian_file_reads_in_native_order(self, tmp_path: Path) -> None:
        data = _sample(np.float32, (2, 3, 4))
        path = tmp_path / "be.mrc"
        with mrcfile.new(path) as m:
            m.set_data(data.astype(">f4"))
        header = mrc.read_header(path)
        assert header.byte_order == ">"
        back = self.read(path)
        assert back.dtype.isnative
        np.testing.assert_array_equal(back, data)
        np.testing.assert_array_equal(mrc.read_slice(path, 1), data[1])

    def test_imod_unsigned_byte_flag(self, tmp_path: Path) -> None:
        data = np.arange(12, dtype=np.int8).reshape(3, 4)
        path = tmp_path / "u8.mrc"
        mrc.write(path, data)
        _patch(path, 152, "<ii", 1146047817, 1)
        back = self.read(path)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, data.view(np.uint8))

    def test_truncated_data_strict_and_permissive(self, tmp_path: Path) -> None:
        data = _sample(np.float32, (4, 8, 8))
        path = tmp_path / "t.mrc"
        mrc.write(path, data)
        with open(path, "r+b") as handle:
            handle.truncate(1024 + 2 * 8 * 8 * 4 + 100)
        with pytest.raises(InvalidInputError, match="header says 8×8×4 mode 2"):
            self.read(path)
        partial = self.read(path, permissive=True)
        np.testing.assert_array_equal(partial, data[:2])

    def test_pre_2000_layout_without_map_word(self, tmp_path: Path) -> None:
        data = _sample(np.float32, (2, 4, 4))
        path = tmp_path / "old.mrc"
        mrc.write(path, data)
        _patch(path, 208, "4s4s", b"\0\0\0\0", b"\0\0\0\0")  # no MAP, no stamp
        assert not mrc.read_header(path).has_map_word
        np.testing.assert_array_equal(self.read(path), data)
        with open(path, "ab") as handle:  # now the size no longer matches
            handle.write(b"x" * 10)
        with pytest.raises(InvalidInputError, match="bad MAP word"):
            self.read(path)
        np.testing.assert_array_equal(self.read(path, permissive=True), data)

    def test_trailing_bytes_are_tolerated(self, tmp_path: Path) -> None:
        data = _sample(np.uint16, (3, 5))
        path = tmp_path / "trail.mrc"
        mrc.write(path, data)
        with open(path, "ab") as handle:
            handle.write(b"\0" * 7)
        np.testing.assert_array_equal(self.read(path), data)

    def test_extended_header_is_skipped(self, tmp_path: Path) -> None:
        data = _sample(np.int16, (2, 3, 4))
        path = tmp_path / "ext.mrc"
        with mrcfile.new(path) as m:
            m.set_extended_header(np.zeros(100, dtype=np.uint8))
            m.header.exttyp = b"SERI"
            m.set_data(data)
        header = mrc.read_header(path)
        assert (header.extended_header_bytes, header.extended_header_type) == (100, "SERI")
        assert header.data_offset == 1124
        np.testing.assert_array_equal(self.read(path), data)


class TestMrcInMemory(MrcReadBehaviour):
    mmap = False


class TestMrcMemmap(MrcReadBehaviour):
    mmap = True

    def check_strategy(self, data: np.ndarray) -> None:
        # Big-endian files are byte-swapped into memory even when mmap is asked for.
        assert isinstance(data, np.memmap) or data.flags.owndata or data.base is not None

    def test_memmap_is_read_only(self, tmp_path: Path) -> None:
        path = tmp_path / "ro.mrc"
        mrc.write(path, np.zeros((2, 3, 4), np.float32))
        data = mrc.read(path, mmap=True)
        assert isinstance(data, np.memmap)
        with pytest.raises(ValueError, match="read-only"):
            data[0, 0, 0] = 1.0


def test_auto_mmap_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.mrc"
    mrc.write(path, np.zeros((4, 16, 16), np.float32))
    assert not isinstance(mrc.read(path), np.memmap)
    monkeypatch.setattr(mrc, "MMAP_THRESHOLD_BYTES", 1000)
    assert isinstance(mrc.read(path), np.memmap)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<i", -5, "absurd dimension nx"),
        (8, "<i", 2**31 - 1, "absurd dimension nz|header says"),
        (12, "<i", 7, "unsupported MRC mode 7"),
        (92, "<i", 2**31 - 1, "extended header but the file has only"),
        (92, "<i", -4, "negative extended-header size"),
        (4, "<i", 100000, "header says"),
    ],
)
def test_bad_headers_are_rejected(tmp_path: Path, offset, fmt, value, message) -> None:
    path = tmp_path / "bad.mrc"
    mrc.write(path, np.zeros((2, 8, 8), np.float32))
    _patch(path, offset, fmt, value)
    with pytest.raises(InvalidInputError, match=message) as caught:
        mrc.read(path)
    assert str(path) in str(caught.value)
    with pytest.raises(InvalidInputError):
        mrc.read_header(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "shorter than the 1024-byte"), (b"hello" * 300, "not an MRC file")],
)
def test_not_an_mrc_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "junk.mrc"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        mrc.read(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        mrc.read(tmp_path / "nope.mrc")
    with pytest.raises(InvalidInputError, match="is a directory"):
        mrc.read_header(tmp_path)


def test_write_is_atomic_and_respects_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "w.mrc"
    mrc.write(path, np.zeros((3, 3), np.float32))
    with pytest.raises(FileExistsError):
        mrc.write(path, np.ones((3, 3), np.float32), overwrite=False)
    mrc.write(path, np.ones((3, 3), np.float32))
    assert mrc.read(path).sum() == 9
    with pytest.raises(ValueError, match="dtype int32"):
        mrc.write(path, np.zeros((3, 3), np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mrc"]  # no temporary left behind


def test_write_conversions_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.mrc"
    mrc.write(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert mrc.read(path).dtype == np.uint16
    mrc.write(path, np.arange(6, dtype=np.float64).reshape(2, 3))
    assert mrc.read(path).dtype == np.float32
    with pytest.raises(ValueError, match="float32 range"):
        mrc.write(path, np.full((2, 2), 1e300))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        mrc.write(path, np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="kind"):
        mrc.write(path, np.zeros((2, 2), np.float32), kind="movie")
    with pytest.raises(ValueError, match="needs 2-D"):
        mrc.write(path, np.zeros((2, 2, 2), np.float32), kind="image")
    with pytest.raises(ValueError, match="voxel size"):
        mrc.write(path, np.zeros((2, 2), np.float32), voxel_size_angstroms=float("nan"))


# -- real files ------------------------------------------------------------------------------------

REAL_FILES = [
    # name, (nx, ny, nz), mode, kind, voxel x (Å), extended-header type
    ("real_micrographs/fei-extended.mrc", (3710, 3838, 1), 6, "image", 0.85378, "FEI1"),
    ("real_micrographs/epu2.9_example.mrc", (4096, 4096, 1), 6, "image", 0.66655, "FEI2"),
    ("cistem_console_test/hiv_image_80x80x1.mrc", (80, 80, 1), 2, "image", 0.0, ""),
    ("cistem_console_test/hiv_images_shift_noise_80x80x10.mrc", (80, 80, 10), 2, "volume", 0.0,
     ""),
    ("cistem_console_test/sine_128x128x1.mrc", (128, 128, 1), 2, "image", 1.0, ""),
    ("particles/relion31.mrcs", (256, 256, 5), 2, "stack", 1.0, ""),
    ("particles/sample.mrcs", (200, 200, 17), 2, "volume", 0.0, ""),
    ("maps/clean70SRibosome_vol_65p.mrc", (65, 65, 65), 2, "volume", 0.0, ""),
]


@pytest.mark.parametrize(("name", "dims", "mode", "kind", "voxel", "exttyp"), REAL_FILES)
def test_real_files(name, dims, mode, kind, voxel, exttyp) -> None:
    path = _need_data(*name.split("/"))
    header = mrc.read_header(path)
    assert (header.nx, header.ny, header.nz) == dims
    assert (header.mode, header.kind, header.extended_header_type) == (mode, kind, exttyp)
    assert header.voxel_size_angstroms[0] == pytest.approx(voxel, abs=1e-5)
    assert header.voxel_size_angstroms[1] == pytest.approx(voxel, abs=1e-5)
    data = mrc.read(path)
    # Same numbers as mrcfile reads (permissively: some of these files predate MRC2014).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pre-2014 files make mrcfile warn
        reference = mrcfile.open(path, permissive=True)
    with reference:
        np.testing.assert_array_equal(data, np.asarray(reference.data).reshape(data.shape))
        if header.has_map_word:
            assert header.voxel_size_angstroms[0] == pytest.approx(
                float(reference.voxel_size.x), rel=1e-6
            )
    np.testing.assert_array_equal(mrc.read_slice(path, -1), data.reshape(-1, *data.shape[-2:])[-1])


def test_cistem_console_test_images_match_the_reference() -> None:
    # Reference §6: min/max of the embedded images and the md5 of the decoded files.
    path = _need_data("cistem_console_test", "hiv_image_80x80x1.mrc")
    assert hashlib.md5(path.read_bytes()).hexdigest() == "ec2bec7f90e0ddfa4a573b330b92e792"
    header = mrc.read_header(path)
    assert header.minimum == pytest.approx(-3.152, abs=1e-3)
    assert header.maximum == pytest.approx(7.022, abs=1e-3)
    image = mrc.read(path)
    assert float(image.min()) == pytest.approx(-3.152, abs=1e-3)
    assert abs(float(image.mean())) < 1e-6
    noisy = _need_data("cistem_console_test", "hiv_images_shift_noise_80x80x10.mrc")
    assert mrc.read(noisy).shape == (10, 80, 80)
    # The reference's figures are the file's header statistics (not recomputed).
    header = mrc.read_header(noisy)
    assert (header.minimum, header.maximum) == pytest.approx((-4.43, 9.34), abs=5e-3)
    assert header.mean == pytest.approx(-0.0109, abs=5e-5)


def test_fei_micrograph_is_large_enough_to_exercise_the_memmap_path() -> None:
    path = _need_data("real_micrographs", "fei-extended.mrc")
    in_memory = mrc.read(path, mmap=False)
    mapped = mrc.read(path, mmap=True)
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(in_memory[::97, ::89], mapped[::97, ::89])
