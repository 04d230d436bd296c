"""Fourier-slice projection: invariants and agreement with real-space sums."""

from __future__ import annotations

import numpy as np
import pytest

from cistemd.kernels import projection
from cistemd.kernels.ctf import CTFParams, ctf_2d
from cistemd.kernels.rotation import random_orientations


def _blob_volume(
    n: int, centres: list[tuple[float, float, float]], sigma: float = 2.0
) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    volume = np.zeros((n, n, n))
    for cx, cy, cz in centres:
        volume += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return volume.astype(np.float32)


def test_delta_at_centre_stays_at_centre() -> None:
    n = 32
    delta = np.zeros((n, n, n), np.float32)
    delta[n // 2, n // 2, n // 2] = 1.0
    projector = projection.prepare_projector(delta)
    angles = random_orientations(50, np.random.default_rng(3))
    images = projection.project(projector, angles)
    for image in images:
        assert np.unravel_index(np.argmax(image), image.shape) == (n // 2, n // 2)
        assert image.sum() == pytest.approx(1.0, rel=1e-4)


def test_projection_matches_rotated_real_space_sum() -> None:
    n = 48
    # An asymmetric arrangement of blobs; rotating the blob centres is exact.
    centres = [(8.0, 0.0, 0.0), (0.0, -6.0, 3.0), (-5.0, 4.0, -9.0), (2.0, 10.0, 6.0)]
    volume = _blob_volume(n, centres)
    projector = projection.prepare_projector(volume)
    from cistemd.kernels.rotation import euler_to_matrix

    for angles in ([0.0, 0.0, 0.0], [30.0, 60.0, -20.0], [170.0, 100.0, 45.0]):
        rotation = euler_to_matrix(*angles)
        rotated = [tuple(rotation @ np.array(c)) for c in centres]
        expected = _blob_volume(n, rotated).sum(axis=0)
        image = projection.project(projector, angles)
        assert np.corrcoef(image.ravel(), expected.ravel())[0, 1] > 0.999
        np.testing.assert_allclose(image.sum(), expected.sum(), rtol=2e-3)


def test_shift_moves_the_particle_in_frealign_convention() -> None:
    n = 32
    volume = _blob_volume(n, [(0.0, 0.0, 0.0)], sigma=1.5)
    projector = projection.prepare_projector(volume)
    image = projection.project(
        projector, [0.0, 0.0, 0.0], shifts_angstroms=[6.0, -4.0], pixel_size_angstroms=2.0
    )
    assert np.unravel_index(np.argmax(image), image.shape) == (n // 2 - 2, n // 2 + 3)


def test_ctf_multiplies_the_transform() -> None:
    n = 32
    volume = _blob_volume(n, [(3.0, 1.0, 0.0), (-4.0, 2.0, 5.0)], sigma=1.0)
    projector = projection.prepare_projector(volume)
    ctf = CTFParams(defocus_1_angstroms=12000.0, defocus_2_angstroms=10000.0,
                    astigmatism_angle_degrees=30.0)
    plain = projection.project(projector, [10.0, 20.0, 30.0], pixel_size_angstroms=1.5)
    with_ctf = projection.project(projector, [10.0, 20.0, 30.0], pixel_size_angstroms=1.5, ctf=ctf)
    centred = np.fft.ifftshift(plain)
    expected = np.fft.fftshift(
        np.fft.irfft2(np.fft.rfft2(centred) * ctf_2d((n, n), 1.5, ctf, rfft=True), s=(n, n))
    )
    np.testing.assert_allclose(with_ctf, expected, atol=1e-4 * np.abs(expected).max())


def test_rejects_non_cubic_volume() -> None:
    with pytest.raises(ValueError, match="cube"):
        projection.prepare_projector(np.zeros((4, 4, 5)))
