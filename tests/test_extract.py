"""Particle extraction: boxes match the simulator's own projection of each particle."""

from __future__ import annotations

import numpy as np
import pytest

from cistemd.kernels import extract, simulate
from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import random_orientations


@pytest.fixture(scope="module")
def noiseless():
    """A noise-free (no ice, no shot noise) micrograph of 6 particles at sub-pixel positions."""
    rng = np.random.default_rng(4)
    model = simulate.apoferritin_like_model(seed=0)
    positions = np.array([[300.4, 290.0], [700.0, 310.6], [1100.5, 305.5],
                          [320.2, 800.8], [760.0, 760.0], [1150.7, 820.3]])
    angles = random_orientations(positions.shape[0], rng)
    ctf = CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=14600.0,
                    astigmatism_angle_degrees=20.0)
    image, _ = simulate.simulate_micrograph(
        model, shape=(1100, 1400), pixel_size_angstroms=1.0, ctf=ctf,
        positions_angstroms=positions, euler_degrees=angles, exposure_e_per_a2=40.0, rng=rng,
        shot_noise=False, ice_thickness_angstroms=0.0, radiation_damage=False,
    )
    return model, image, positions, angles, ctf


def _reference(model, angles, ctf, box, offset_px):
    """The simulator's own image of one particle alone, centred like the box."""
    canvas = 512
    single, _ = simulate.simulate_micrograph(
        model, shape=(canvas, canvas), pixel_size_angstroms=1.0, ctf=ctf,
        positions_angstroms=[[canvas // 2 + offset_px[0], canvas // 2 + offset_px[1]]],
        euler_degrees=[angles], exposure_e_per_a2=40.0, rng=np.random.default_rng(0),
        shot_noise=False, ice_thickness_angstroms=0.0, radiation_damage=False,
    )
    half = box // 2
    return single[canvas // 2 - half : canvas // 2 - half + box,
                  canvas // 2 - half : canvas // 2 - half + box]


def test_extracted_particles_match_the_simulators_projection(noiseless):
    model, image, positions, angles, ctf = noiseless
    box = 288
    stack = extract.extract_particles(image, positions[:, 0], positions[:, 1],
                                      pixel_size_angstroms=1.0, box_size=box)
    assert stack.shape == (6, box, box)
    correlations = []
    for i, (x, y) in enumerate(positions):
        # The box centre is the nearest pixel; the particle keeps its sub-pixel offset.
        offset = (x - np.floor(x + 0.5), y - np.floor(y + 0.5))
        reference = _reference(model, angles[i], ctf, box, offset)
        correlations.append(float(np.corrcoef(stack[i].ravel(), reference.ravel())[0, 1]))
    assert min(correlations) >= 0.99, correlations


def test_boxes_are_normalised_padded_and_inverted():
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    edge = extract.edge_mean(image)
    raw = extract.extract_particles(image, [0.0], [0.0], pixel_size_angstroms=2.0, box_size=10,
                                    normalize=False)
    assert raw.shape == (1, 10, 10)
    assert np.all(raw[0, :5, :] == np.float32(edge))  # above the first row: padding
    assert raw[0, 5, 5] == image[0, 0]  # the centre pixel is the particle's
    boxes = extract.extract_particles(image, [100.0, 60.2], [50.0, 40.0],
                                      pixel_size_angstroms=2.0, box_size=16)
    assert np.allclose(boxes.mean(axis=(1, 2)), 0.0, atol=1e-5)
    assert np.allclose(boxes.std(axis=(1, 2)), 1.0, atol=1e-4)
    inverted = extract.extract_particles(image, [100.0], [50.0], pixel_size_angstroms=2.0,
                                         box_size=16, invert=True)
    assert np.allclose(inverted[0], -boxes[0])
    # round half away from zero: x = 60.2 Å / 2 Å = 30.1 -> column 30
    assert boxes[1][8, 8] == pytest.approx(
        extract.normalize_box(image[32:48, 22:38])[8, 8], abs=1e-5)


def test_outliers_replaced_and_bad_input():
    image = np.zeros((64, 64), dtype=np.float32)
    image[::7, ::5] = 1.0
    image[10, 10] = 1e6
    cleaned = extract.replace_outliers_with_mean(image, 6.0)
    assert cleaned[10, 10] == pytest.approx(float(image.mean()))
    with pytest.raises(ValueError, match="box_size"):
        extract.extract_particles(image, [1.0], [1.0], pixel_size_angstroms=1.0, box_size=1)
    with pytest.raises(ValueError, match="equal length"):
        extract.extract_particles(image, [1.0, 2.0], [1.0], pixel_size_angstroms=1.0,
                                  box_size=8)
