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
