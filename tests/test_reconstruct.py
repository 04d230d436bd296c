"""Direct Fourier reconstruction: noise-free accuracy, dump/merge, symmetry, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cistemd.errors import InvalidInputError
from cistemd.io.dump import read_dump, write_dump
from cistemd.kernels import projection, reconstruct, resolution, simulate
from cistemd.kernels.rotation import random_orientations


def _batch(
    images: np.ndarray, angles: np.ndarray, **overrides: np.ndarray
) -> reconstruct.ParticleBatch:
    m = images.shape[0]
    fields = dict(
        images=images,
        euler_degrees=angles,
        shifts_angstroms=np.zeros((m, 2)),
        defocus=np.zeros((m, 3)),
        phase_shift_degrees=np.zeros(m),
        voltage_kv=np.full(m, 300.0),
        spherical_aberration_mm=np.full(m, 2.7),
        amplitude_contrast=np.full(m, 0.07),
        weights=np.ones(m),
        score_b_factors=np.zeros(m),
        halves=np.arange(m) % 2,
    )
    fields.update(overrides)
    return reconstruct.ParticleBatch(**fields)


@pytest.fixture(scope="module")
def test_map() -> np.ndarray:
    model = simulate.asymmetric_protein_model(n_residues=400, seed=1)
    return simulate.coulomb_potential_map(
        model, box=48, pixel_size_angstroms=2.0, b_factor_angstroms2=20.0
    )


def test_noise_free_reconstruction_fsc(test_map: np.ndarray) -> None:
    n = test_map.shape[0]
    angles = random_orientations(5000, np.random.default_rng(0))
    images = projection.project(projection.prepare_projector(test_map), angles)
    rec = reconstruct.Reconstruction.empty(n, 2.0)
    rec.insert(_batch(images, angles), use_ctf=False)
    assert rec.particle_counts.tolist() == [2500, 2500]
    volume = rec.half_map(None, constant=0.0)
    shells, values = resolution.fsc(volume, test_map)
    assert np.all(values[shells <= 0.9 * n / 2] >= 0.95)
    assert volume.sum() == pytest.approx(test_map.sum(), rel=0.05)  # the integral is kept


def test_delta_reconstructs_at_centre() -> None:
    n = 24
    delta = np.zeros((n, n, n), np.float32)
    delta[n // 2, n // 2, n // 2] = 1.0
    angles = random_orientations(300, np.random.default_rng(1))
    images = projection.project(projection.prepare_projector(delta), angles)
    rec = reconstruct.Reconstruction.empty(n, 1.0, padding=2)
    rec.insert(_batch(images, angles), use_ctf=False)
    volume = rec.half_map(None, constant=0.0)
    assert np.unravel_index(np.argmax(volume), volume.shape) == (n // 2,) * 3


def test_shifts_and_ctf_are_undone(test_map: np.ndarray) -> None:
    from cistemd.kernels.ctf import CTFParams

    n = test_map.shape[0]
    rng = np.random.default_rng(2)
    m = 3000
    angles = random_orientations(m, rng)
    shifts = rng.uniform(-6, 6, (m, 2))
    defocus = rng.uniform(8000, 15000, m)
    projector = projection.prepare_projector(test_map)
    ctfs = [CTFParams(defocus_1_angstroms=d, defocus_2_angstroms=d - 300,
                      astigmatism_angle_degrees=20.0) for d in defocus]
    images = projection.project(
        projector, angles, shifts_angstroms=shifts, pixel_size_angstroms=2.0, ctf=ctfs
    )
    df = np.stack([defocus, defocus - 300, np.full(m, 20.0)], axis=1)
    rec = reconstruct.Reconstruction.empty(n, 2.0)
    rec.insert(_batch(images, angles, shifts_angstroms=shifts, defocus=df))
    volume = rec.half_map(None, constant=1.0)
    shells, values = resolution.fsc(volume, test_map)
    assert np.all(values[(shells >= 2) & (shells <= 0.8 * n / 2)] >= 0.9)


def test_dump_merge_equals_single_pass(tmp_path: Path, test_map: np.ndarray) -> None:
    n = test_map.shape[0]
    angles = random_orientations(400, np.random.default_rng(4))
    images = projection.project(projection.prepare_projector(test_map), angles)
    whole = reconstruct.Reconstruction.empty(n, 2.0)
    whole.insert(_batch(images, angles))
    merged = reconstruct.Reconstruction.empty(n, 2.0)
    for index, chunk in enumerate(np.array_split(np.arange(400), 3)):
        part = reconstruct.Reconstruction.empty(n, 2.0)
        part.insert(_batch(images[chunk], angles[chunk], halves=chunk % 2))
        write_dump(tmp_path / f"dump_{index}.npz", part, symmetry="C1")
        loaded, symmetry = read_dump(tmp_path / f"dump_{index}.npz")
        assert symmetry == "C1"
        merged.merge(loaded)
    scale = np.abs(whole.numerator).max()
    np.testing.assert_allclose(merged.numerator, whole.numerator, atol=1e-5 * scale)
    np.testing.assert_allclose(
        merged.ctf_squared, whole.ctf_squared, atol=1e-5 * whole.ctf_squared.max()
    )
    assert merged.particle_counts.tolist() == whole.particle_counts.tolist()
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(reconstruct.Reconstruction.empty(n + 2, 2.0))


def test_bad_dump_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad_dump.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(InvalidInputError, match=r"bad_dump\.npz"):
        read_dump(bad)


def test_selection_weights_and_half_sets() -> None:
    occupancy = np.array([100.0, 0.0, 100.0, 50.0, 100.0])
    active = np.array([1, 1, -1, 1, 1])
    score = np.array([10.0, 20.0, 30.0, 5.0, 40.0])
    keep = reconstruct.select_particles(occupancy=occupancy, image_is_active=active, score=score)
    assert keep.tolist() == [True, False, False, True, True]
    best = reconstruct.select_particles(
        occupancy=occupancy, image_is_active=active, score=score, score_threshold=0.34
    )
    assert best.tolist() == [False, False, False, False, True]
    absolute = reconstruct.select_particles(
        occupancy=occupancy, image_is_active=active, score=score, score_threshold=7.0
    )
    assert absolute.tolist() == [True, False, False, False, True]
    weights, b = reconstruct.particle_weights(
        [100.0, 50.0], [1.0, 2.0], [10.0, 20.0], score_weight_conversion=2.0
    )
    np.testing.assert_allclose(weights, [(100 / 75) / (1 / 1.5) ** 2, (50 / 75) / (2 / 1.5) ** 2])
    np.testing.assert_allclose(b, [-10.0, 10.0])
    halves = reconstruct.assign_half_sets(np.arange(1, 9), block_size=2)
    assert halves.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    subset = reconstruct.assign_half_sets(np.arange(1, 5), np.array([1, 2, 2, 1]))
    assert subset.tolist() == [0, 1, 1, 0]
    defocus = np.linspace(10000, 20000, 50)
    scores = 30 + 0.001 * defocus + np.sin(np.arange(50))
    adjusted = reconstruct.adjust_scores_for_defocus(scores, defocus)
    assert abs(np.polyfit(defocus, adjusted, 1)[0]) < 1e-9
    assert adjusted.mean() == pytest.approx(scores.mean())


def _reference_insertion(
    batch: reconstruct.ParticleBatch, sym: np.ndarray, n: int, padding: int, pixel: float
) -> tuple[np.ndarray, np.ndarray]:
    """Plain trilinear spreading, one lattice point at a time (no CTF)."""
    from cistemd.kernels.rotation import euler_to_matrix

    big_n = n * padding
    num = np.zeros((2, big_n, big_n, big_n // 2 + 1), np.complex128)
    ctf2 = np.zeros((2, big_n, big_n, big_n // 2 + 1))

    def put(h: int, x: int, y: int, z: int, value: complex, weight: float) -> None:
        if x > big_n // 2:
            x -= big_n
        if x < 0:
            x, y, z, value = -x, -y, -z, np.conj(value)
        elif x == 0:  # the x = 0 plane also holds the Friedel mate
            num[h, -z % big_n, -y % big_n, 0] += np.conj(value)
            ctf2[h, -z % big_n, -y % big_n, 0] += weight
        num[h, z % big_n, y % big_n, x] += value
        ctf2[h, z % big_n, y % big_n, x] += weight

    angles = np.asarray(batch.euler_degrees)
    rotations = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    for p, image in enumerate(np.asarray(batch.images, np.float64)):
        transform = np.fft.rfft2(image)
        centre = n // 2 + np.asarray(batch.shifts_angstroms[p]) / pixel
        h = int(batch.halves[p])
        for iy in range(n):
            ky = iy if iy < (n + 1) // 2 else iy - n
            for ix in range(0 if ky >= 0 else 1, n // 2 + 1):
                if ix * ix + ky * ky > (n / 2) ** 2:
                    continue
                k2 = (ix * ix + ky * ky) / (n * pixel) ** 2
                weight = batch.weights[p] * np.exp(batch.score_b_factors[p] * k2 / 4)
                phase = np.exp(2j * np.pi * (ix * centre[0] + ky * centre[1]) / n)
                value = transform[iy, ix] * phase * weight
                for operator in sym:
                    q = padding * (rotations[p] @ operator.T).T @ np.array([ix, ky, 0.0])
                    v = value
                    if q[0] < 0:
                        q, v = -q, np.conj(value)
                    corner = np.floor(q).astype(int)
                    f = q - corner
                    for d in np.ndindex(2, 2, 2):
                        t = np.prod(np.where(np.array(d) == 1, f, 1 - f))
                        put(h, *(corner + np.array(d)), v * t, weight * t)
    return num, ctf2


@pytest.mark.parametrize("padding", [1, 2])
def test_insertion_matches_plain_trilinear_spreading(padding: int) -> None:
    n, m, pixel = 10, 4, 1.5
    rng = np.random.default_rng(5)
    angles = random_orientations(m, rng)
    batch = _batch(
        rng.normal(size=(m, n, n)).astype(np.float32),
        angles,
        shifts_angstroms=rng.uniform(-3, 3, (m, 2)),
        weights=rng.uniform(0.5, 2.0, m),
        score_b_factors=rng.uniform(-50, 50, m),
    )
    sym = np.array([np.eye(3), np.diag([-1.0, -1.0, 1.0])])  # C2
    rec = reconstruct.Reconstruction.empty(n, pixel, padding=padding)
    rec.insert(batch, symmetry_matrices=sym, use_ctf=False)
    num, ctf2 = _reference_insertion(batch, sym, n, padding, pixel)
    np.testing.assert_allclose(rec.numerator, num, atol=1e-5 * np.abs(num).max())
    np.testing.assert_allclose(rec.ctf_squared, ctf2, atol=1e-5 * ctf2.max())
