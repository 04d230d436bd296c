"""Numba inner loops of projection and reconstruction (private; use the wrappers).

Layout shared by both loops
---------------------------
* The 3-D transform is the ``rfftn`` of a padded ``N³`` volume whose centre
  (voxel ``N // 2``) was moved to index 0 (``ifftshift``), stored
  ``[z, y, x]`` with ``N // 2 + 1`` non-negative ``x`` frequencies. A lattice
  point with ``x < 0`` is read or written through its Friedel mate
  ``(−x, −y, −z)`` (complex conjugate).
* A 2-D image transform is the ``rfft2`` of an ``(n, n)`` image, ``[y, x]``,
  ``n // 2 + 1`` non-negative ``kx``; row ``iy`` is ``ky = iy`` for
  ``iy < (n + 1) // 2`` and ``iy − n`` otherwise.
* The insertion accumulator interleaves, per voxel, Re and Im of
  ``Σ X·CTF·w`` and ``Σ CTF²·w`` (3 float32), so both x-neighbours of a
  trilinear footprint row share one cache line; each image row's values are
  computed once (CTF, weight, phase shift) and then spread for every symmetry
  copy: first the trilinear footprints of the whole row (with a prefetch of
  every accumulator line they touch), then the read-modify-writes, so the
  cache misses of many pixels overlap instead of stalling one by one.
* Image frequency ``(kx, ky)`` (in units of ``1 / n`` cycles per pixel) sits
  at ``padding · Mᵀ (kx, ky, 0)`` of the 3-D grid, where ``padding = N / n``
  and ``M`` is the particle's rotation matrix (``R(φ, θ, ψ)``, composed with a
  symmetry operator for symmetry copies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["extract_slices", "insert_slices"]


def _prefetch_typing(typingctx: Any, arr: Any, index: Any) -> tuple[Any, Any]:  # pragma: no cover
    """Hint the CPU to fetch ``arr[index]``'s cache line for writing (no effect on results).

    Emits LLVM's ``llvm.prefetch`` (x86 ``prefetchw``): the scattered
    read-modify-writes of :func:`insert_slices` are latency-bound, so the
    footprints of a whole image row are computed and their lines requested
    before the first one is updated.
    """
    sig = types.void(arr, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, array, [args[1]], wraparound=False
        )
        ir = cgutils.ir
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        # rw = 1 (write), locality = 3 (keep in all cache levels), cache type = 1 (data)
        address = builder.bitcast(pointer, cgutils.voidptr_t)
        builder.call(function, [address, i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_prefetch: Any = intrinsic(_prefetch_typing)


@njit(cache=True, nogil=True, inline="always")
def _row_frequency(iy: int, n: int) -> int:  # pragma: no cover - compiled
    return iy if iy < (n + 1) // 2 else iy - n


@njit(cache=True, nogil=True)
def _lookup(volume: np.ndarray, x: int, y: int, z: int) -> complex:  # pragma: no cover
    big_n = volume.shape[0]
    half = volume.shape[2] - 1
    if x > half:
        x -= big_n
    if x < 0:
        value = volume[(-z) % big_n, (-y) % big_n, -x]
        return value.real - 1j * value.imag
    return volume[z % big_n, y % big_n, x]


@njit(cache=True, nogil=True)
def extract_slices(
    volume: np.ndarray,
    matrices: np.ndarray,
    padding: float,
    max_radius: float,
    shifts_px: np.ndarray,
    ctf_parameters: np.ndarray,
    use_ctf: bool,
    pixel_size: float,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fill ``out[p]`` (``(m, n, n//2+1)``) with central slices of ``volume`` (trilinear).

    ``matrices`` is ``(m, 3, 3)``. Each slice is multiplied by its CTF (when
    ``use_ctf``; ``ctf_parameters`` as in :func:`insert_slices`) and by the
    phase ramp that puts the projection's centre at ``shifts_px[p]`` (pixels).
    Frequencies with ``|k| > max_radius`` (``1/n`` units) are set to 0.
    """
    m, n, nh = out.shape
    big_n = volume.shape[0]
    top = volume.shape[2] - 1
    r2max = max_radius * max_radius
    two_pi = 2.0 * math.pi
    k_unit2 = 1.0 / (n * pixel_size) ** 2
    ex = np.empty(nh, dtype=np.complex128)
    ey = np.empty(n, dtype=np.complex128)
    constants = np.zeros(7)
    for p in range(m):
        if use_ctf:
            _ctf_constants(ctf_parameters, p, constants)
        for ix in range(nh):
            angle = -two_pi * ix * shifts_px[p, 0] / n
            ex[ix] = complex(math.cos(angle), math.sin(angle))
        for iy in range(n):
            angle = -two_pi * _row_frequency(iy, n) * shifts_px[p, 1] / n
            ey[iy] = complex(math.cos(angle), math.sin(angle))
        a00 = matrices[p, 0, 0] * padding
        a01 = matrices[p, 0, 1] * padding
        a02 = matrices[p, 0, 2] * padding
        a10 = matrices[p, 1, 0] * padding
        a11 = matrices[p, 1, 1] * padding
        a12 = matrices[p, 1, 2] * padding
        for iy in range(n):
            ky = _row_frequency(iy, n)
            for ix in range(nh):
                r2 = float(ix * ix + ky * ky)
                if r2 > r2max:
                    out[p, iy, ix] = 0.0
                    continue
                qx = a00 * ix + a10 * ky
                qy = a01 * ix + a11 * ky
                qz = a02 * ix + a12 * ky
                flip = qx < 0.0
                if flip:
                    qx = -qx
                    qy = -qy
                    qz = -qz
                x0 = math.floor(qx)
                y0 = math.floor(qy)
                z0 = math.floor(qz)
                fx = qx - x0
                fy = qy - y0
                fz = qz - z0
                xi = int(x0)
                yi = int(y0)
                zi = int(z0)
                acc = 0j
                if xi + 1 <= top:
                    # Fast path: both x neighbours stored directly (xi >= 0 after the flip).
                    ya = yi + big_n if yi < 0 else yi
                    yb = ya + 1 if ya + 1 < big_n else 0
                    za = zi + big_n if zi < 0 else zi
                    zb = za + 1 if za + 1 < big_n else 0
                    for dz in range(2):
                        zz = zb if dz else za
                        wz = fz if dz else 1.0 - fz
                        for dy in range(2):
                            yy = yb if dy else ya
                            wyz = (fy if dy else 1.0 - fy) * wz
                            acc += wyz * (
                                (1.0 - fx) * volume[zz, yy, xi] + fx * volume[zz, yy, xi + 1]
                            )
                else:
                    for dz in range(2):
                        wz = fz if dz else 1.0 - fz
                        for dy in range(2):
                            wy = fy if dy else 1.0 - fy
                            for dx in range(2):
                                wx = fx if dx else 1.0 - fx
                                acc += wx * wy * wz * _lookup(volume, xi + dx, yi + dy, zi + dz)
                if flip:
                    acc = acc.conjugate()
                if use_ctf:
                    acc *= _ctf_at(ix, ky, r2, r2 * k_unit2, constants)
                out[p, iy, ix] = acc * ex[ix] * ey[iy]


@njit(cache=True, nogil=True)
def _add(
    acc: np.ndarray,
    half: int,
    x: int,
    y: int,
    z: int,
    re: float,
    im: float,
    c2: float,
) -> None:  # pragma: no cover - compiled
    """Add one weighted sample at lattice point ``(x, y, z)`` (any integers; see module doc)."""
    big_n = acc.shape[1]
    top = acc.shape[3] // 3 - 1
    if x > top:
        x -= big_n
    if x < 0:
        zz = (-z) % big_n
        yy = (-y) % big_n
        base = -3 * x
        acc[half, zz, yy, base] += re
        acc[half, zz, yy, base + 1] -= im
        acc[half, zz, yy, base + 2] += c2
        return
    zz = z % big_n
    yy = y % big_n
    base = 3 * x
    acc[half, zz, yy, base] += re
    acc[half, zz, yy, base + 1] += im
    acc[half, zz, yy, base + 2] += c2
    if x == 0:
        # The x = 0 plane also receives the Friedel mate of this pixel
        # (its −k partner, which the half-plane does not visit).
        zz = (-z) % big_n
        yy = (-y) % big_n
        acc[half, zz, yy, 0] += re
        acc[half, zz, yy, 1] -= im
        acc[half, zz, yy, 2] += c2


@njit(cache=True, nogil=True, inline="always")
def _ctf_at(
    ix: int, ky: int, r2: float, k2: float, c: np.ndarray
) -> float:  # pragma: no cover - compiled
    """``−sin χ`` at image frequency ``(ix, ky)``; ``c`` from :func:`_ctf_constants`."""
    defocus = c[0]
    if r2 > 0:
        defocus += c[1] * ((ix * ix - ky * ky) * c[2] + 2.0 * ix * ky * c[3]) / r2
    return -_fast_sin(c[4] * k2 * (defocus - c[5] * k2) + c[6])


@njit(cache=True, nogil=True, inline="always")
def _fast_sin(x: float) -> float:  # pragma: no cover - compiled
    """``sin x`` to ~1e-7 absolute: reduction to [−π/2, π/2] and a degree-11 Taylor polynomial."""
    x = x - 2.0 * math.pi * math.floor(x / (2.0 * math.pi) + 0.5)  # [−π, π]
    if x > 0.5 * math.pi:
        x = math.pi - x
    elif x < -0.5 * math.pi:
        x = -math.pi - x
    x2 = x * x
    return x * (
        1.0
        + x2
        * (
            -1.0 / 6.0
            + x2
            * (
                1.0 / 120.0
                + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362880.0 - x2 / 39916800.0))
            )
        )
    )


@njit(cache=True, nogil=True)
def _ctf_constants(params: np.ndarray, p: int, out: np.ndarray) -> None:  # pragma: no cover
    """Per-particle constants of :func:`_ctf_at` from a row of the CTF table."""
    wavelength = params[p, 4]
    out[0] = 0.5 * (params[p, 0] + params[p, 1])
    out[1] = 0.5 * (params[p, 0] - params[p, 1])
    out[2] = math.cos(2.0 * params[p, 2])
    out[3] = math.sin(2.0 * params[p, 2])
    out[4] = math.pi * wavelength
    out[5] = 0.5 * wavelength * wavelength * params[p, 5]
    out[6] = params[p, 3]


@njit(cache=True, nogil=True)
def insert_slices(
    acc: np.ndarray,
    images: np.ndarray,
    matrices: np.ndarray,
    halves: np.ndarray,
    shifts_px: np.ndarray,
    weights: np.ndarray,
    b_factors: np.ndarray,
    ctf_parameters: np.ndarray,
    use_ctf: bool,
    pixel_size: float,
    padding: float,
    max_radius: float,
) -> None:  # pragma: no cover - compiled
    """Add ``X·CTF·w`` and ``CTF²·w`` into ``acc`` by trilinear spreading.

    Parameters (all per particle ``p`` of ``m``; ``s`` symmetry copies)
    ------------------------------------------------------------------
    acc
        ``(2, N, N, 3·(N//2+1))`` float32 accumulator: for voxel ``x`` the
        entries ``3x, 3x+1, 3x+2`` hold Re and Im of ``Σ X·CTF·w`` and ``Σ CTF²·w``.
    images
        ``(m, n, n//2+1)`` complex ``rfft2`` of the raw (uncentred) images.
    matrices
        ``(m, s, 3, 3)``: ``R·Sᵀ`` for every particle and symmetry operator.
    halves
        ``(m,)`` 0 or 1.
    shifts_px
        ``(m, 2)``: position of the particle centre in the image, pixels
        (``n // 2`` plus the Frealign shift); removed with a phase ramp.
    weights, b_factors
        ``(m,)`` particle weight and score B-factor (Å²): the inserted weight
        is ``w · exp(B k² / 4)``, ``k`` in 1/Å.
    ctf_parameters
        ``(m, 6)``: df1 Å, df2 Å, astigmatism azimuth rad, total phase rad
        (additional + amplitude contrast), wavelength Å, Cs Å.
    use_ctf
        ``False`` inserts ``X`` with ``CTF = 1``.
    pixel_size
        Å per pixel of the images.
    padding
        ``N / n``.
    max_radius
        Frequencies with ``|k| > max_radius`` (``1/n`` units) are skipped.
    """
    m, n, nh = images.shape
    big_n = acc.shape[1]
    top = acc.shape[3] // 3 - 1
    n_sym = matrices.shape[1]
    r2max = max_radius * max_radius
    two_pi = 2.0 * math.pi
    k_unit2 = 1.0 / (n * pixel_size) ** 2
    ex = np.empty(nh, dtype=np.complex128)
    ey = np.empty(n, dtype=np.complex128)
    constants = np.zeros(7)
    row_re = np.zeros(nh)
    row_im = np.zeros(nh)
    row_c2 = np.zeros(nh)
    width = acc.shape[3]
    flat = acc.reshape(acc.size)
    fxs = np.zeros(nh)
    fys = np.zeros(nh)
    fzs = np.zeros(nh)
    signs = np.zeros(nh)
    offsets = np.zeros((nh, 4), dtype=np.int64)
    for p in range(m):
        if use_ctf:
            _ctf_constants(ctf_parameters, p, constants)
        sx = shifts_px[p, 0]
        sy = shifts_px[p, 1]
        for ix in range(nh):
            angle = two_pi * ix * sx / n
            ex[ix] = complex(math.cos(angle), math.sin(angle))
        for iy in range(n):
            angle = two_pi * _row_frequency(iy, n) * sy / n
            ey[iy] = complex(math.cos(angle), math.sin(angle))
        w = weights[p]
        b = b_factors[p]
        h = halves[p]
        for iy in range(n):
            ky = _row_frequency(iy, n)
            remaining = r2max - ky * ky
            if remaining < 0:
                continue
            ix_end = min(nh - 1, int(math.sqrt(remaining)))  # truncation = floor here
            ix_start = 1 if ky < 0 else 0  # (0, -ky) is inserted as the mate of (0, ky)
            for ix in range(ix_start, ix_end + 1):
                r2 = float(ix * ix + ky * ky)
                k2 = r2 * k_unit2
                ctf = _ctf_at(ix, ky, r2, k2, constants) if use_ctf else 1.0
                weight = w if b == 0.0 else w * math.exp(b * k2 / 4.0)
                value = images[p, iy, ix] * ex[ix] * ey[iy] * (ctf * weight)
                row_re[ix] = value.real
                row_im[ix] = value.imag
                row_c2[ix] = ctf * ctf * weight
            for s in range(n_sym):
                m00 = padding * matrices[p, s, 0, 0]
                m01 = padding * matrices[p, s, 0, 1]
                m02 = padding * matrices[p, s, 0, 2]
                q0x = padding * matrices[p, s, 1, 0] * ky
                q0y = padding * matrices[p, s, 1, 1] * ky
                q0z = padding * matrices[p, s, 1, 2] * ky
                # Pass 1: footprint of every pixel of the row; prefetch its cache lines
                # so that pass 2's read-modify-writes find them in cache.
                for ix in range(ix_start, ix_end + 1):
                    qx = q0x + m00 * ix
                    qy = q0y + m01 * ix
                    qz = q0z + m02 * ix
                    sign = 1.0
                    if qx < 0.0:
                        # Insert the Friedel mate instead: conj(value) at -q.
                        qx = -qx
                        qy = -qy
                        qz = -qz
                        sign = -1.0
                    x0 = math.floor(qx)
                    y0 = math.floor(qy)
                    z0 = math.floor(qz)
                    xi = int(x0)
                    yi = int(y0)
                    zi = int(z0)
                    fxs[ix] = qx - x0
                    fys[ix] = qy - y0
                    fzs[ix] = qz - z0
                    signs[ix] = sign
                    if xi >= 1 and xi + 1 <= top:
                        ya = yi + big_n if yi < 0 else yi
                        yb = ya + 1 if ya + 1 < big_n else 0
                        za = zi + big_n if zi < 0 else zi
                        zb = za + 1 if za + 1 < big_n else 0
                        plane_a = (h * big_n + za) * big_n
                        plane_b = (h * big_n + zb) * big_n
                        base = 3 * xi
                        o = (plane_a + ya) * width + base
                        offsets[ix, 0] = o
                        _prefetch(flat, o)
                        _prefetch(flat, o + 5)  # the 6 floats may straddle 2 lines
                        o = (plane_a + yb) * width + base
                        offsets[ix, 1] = o
                        _prefetch(flat, o)
                        _prefetch(flat, o + 5)
                        o = (plane_b + ya) * width + base
                        offsets[ix, 2] = o
                        _prefetch(flat, o)
                        _prefetch(flat, o + 5)
                        o = (plane_b + yb) * width + base
                        offsets[ix, 3] = o
                        _prefetch(flat, o)
                        _prefetch(flat, o + 5)
                    else:
                        offsets[ix, 0] = -1
                        offsets[ix, 1] = xi
                        offsets[ix, 2] = yi
                        offsets[ix, 3] = zi
                # Pass 2: spread.
                for ix in range(ix_start, ix_end + 1):
                    ur = row_re[ix]
                    ui = row_im[ix] * signs[ix]
                    c2 = row_c2[ix]
                    fx = fxs[ix]
                    fy = fys[ix]
                    fz = fzs[ix]
                    if offsets[ix, 0] >= 0:
                        gx0 = np.float32(1.0 - fx)
                        gx1 = np.float32(fx)
                        gy0 = np.float32(1.0 - fy)
                        gy1 = np.float32(fy)
                        gz0 = np.float32(1.0 - fz)
                        gz1 = np.float32(fz)
                        fur = np.float32(ur)
                        fui = np.float32(ui)
                        fc2 = np.float32(c2)
                        for corner in range(4):
                            wyz = (gy1 if corner & 1 else gy0) * (gz1 if corner & 2 else gz0)
                            w0 = gx0 * wyz
                            w1 = gx1 * wyz
                            o = offsets[ix, corner]
                            flat[o] += fur * w0
                            flat[o + 1] += fui * w0
                            flat[o + 2] += fc2 * w0
                            flat[o + 3] += fur * w1
                            flat[o + 4] += fui * w1
                            flat[o + 5] += fc2 * w1
                        continue
                    xi = offsets[ix, 1]
                    yi = offsets[ix, 2]
                    zi = offsets[ix, 3]
                    for dz in range(2):
                        wz = fz if dz else 1.0 - fz
                        for dy in range(2):
                            wyz = (fy if dy else 1.0 - fy) * wz
                            for dx in range(2):
                                wt = (fx if dx else 1.0 - fx) * wyz
                                _add(
                                    acc,
                                    h,
                                    xi + dx,
                                    yi + dy,
                                    zi + dz,
                                    ur * wt,
                                    ui * wt,
                                    c2 * wt,
                                )
