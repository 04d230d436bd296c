"""A bounds-checked TIFF LZW decoder (numba).

TIFF's LZW (compression 5, TIFF 6.0 §13): MSB-first variable-width codes of 9
to 12 bits, Clear = 256, EndOfInformation = 257, first free code 258, and the
"early change": the width grows one code before the table would overflow it
(after code 510 is assigned, codes are 10 bits wide; after 1022, 11; after
2046, 12).

Why our own: imagecodecs' LZW decoder crashed the interpreter (SIGSEGV) on
damaged strips in our reader fuzz test (``tests/test_fuzz_readers.py``), and a
reader must turn hostile input into :class:`~cistemd.errors.InvalidInputError`,
never a crash. Every table and output access here is bounds-checked; decoding
stops when the output is full (as libtiff does), so trailing garbage after a
complete strip is ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LZW_CORRUPT", "lzw_decode_into"]

LZW_CORRUPT = -1
_CLEAR = 256
_END = 257
_FIRST_FREE = 258
_TABLE_SIZE = 4096


def _make_decoder() -> Any:
    import numba

    @numba.njit(cache=True, nogil=True)
    def decode(src: np.ndarray, dst: np.ndarray) -> int:  # pragma: no cover - compiled
        prefix = np.empty(_TABLE_SIZE, np.int32)
        suffix = np.empty(_TABLE_SIZE, np.uint8)
        first = np.empty(_TABLE_SIZE, np.uint8)
        length = np.empty(_TABLE_SIZE, np.int32)
        for code in range(256):
            prefix[code] = -1
            suffix[code] = code
            first[code] = code
            length[code] = 1
        n_src = src.shape[0]
        n_dst = dst.shape[0]
        total_bits = n_src * 8
        bit = 0
        width = 9
        next_code = _FIRST_FREE
        previous = -1
        written = 0
        while written < n_dst and bit + width <= total_bits:
            index = bit >> 3
            accumulator = 0
            for k in range(3):
                accumulator <<= 8
                if index + k < n_src:
                    accumulator |= src[index + k]
            code = (accumulator >> (24 - (bit & 7) - width)) & ((1 << width) - 1)
            bit += width
            if code == _END:
                break
            if code == _CLEAR:
                width = 9
                next_code = _FIRST_FREE
                previous = -1
                continue
            if previous == -1:
                if code > 255:
                    return LZW_CORRUPT
                dst[written] = code
                written += 1
                previous = code
                continue
            if code > next_code or (code == next_code and next_code >= _TABLE_SIZE):
                return LZW_CORRUPT
            if next_code < _TABLE_SIZE:
                # The new entry is the previous string plus the first byte of this
                # one; when ``code`` is that very entry (KwKwK), its first byte is
                # the previous string's.
                head = first[code] if code < next_code else first[previous]
                prefix[next_code] = previous
                suffix[next_code] = head
                first[next_code] = first[previous]
                length[next_code] = length[previous] + 1
                next_code += 1
                if next_code == (1 << width) - 1 and width < 12:
                    width += 1
            # Emit the string of ``code`` back to front, clipped to the output.
            size = length[code]
            walk = code
            for offset in range(size - 1, -1, -1):
                if written + offset < n_dst:
                    dst[written + offset] = suffix[walk]
                walk = prefix[walk]
            written = min(written + size, n_dst)
            previous = code
        return written

    return decode


_decoder: Any = None


def lzw_decode_into(src: np.ndarray, dst: np.ndarray) -> int:
    """Decode TIFF-LZW bytes ``src`` into ``dst``; return bytes written or ``LZW_CORRUPT``.

    Parameters
    ----------
    src
        ``(n,)`` uint8, one compressed strip or tile.
    dst
        ``(m,)`` uint8 output; decoding stops when it is full.
    """
    global _decoder
    if src.dtype != np.uint8 or src.ndim != 1 or dst.dtype != np.uint8 or dst.ndim != 1:
        raise ValueError("lzw_decode_into needs 1-D uint8 input and output arrays")
    if _decoder is None:
        _decoder = _make_decoder()
    return int(_decoder(src, dst))
