"""Find Particles kernel: accuracy on simulated micrographs with known particle positions.

Micrographs of 2048² pixels (1-1.5 Å/px, 30-50 e/Å²) with globular particles of
135 Å (the simulator's apoferritin, a hollow 24-mer), ~120 Å (apoferritin
scaled by 0.89 with 70 % of its atoms: a light, hollow 120 Å particle), a
solid 120 Å globule (~750 kDa) and ~200 Å diameter (three rotated copies of
apoferritin scaled by 1.5), so the protein density stays realistic, picked
with the default parameters. A pick is a true positive within 0.2 × the
particle diameter of a true centre.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cistemd.kernels import picking, simulate
from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import euler_to_matrix, random_orientations

SIZE = 2048


def _big_model() -> simulate.AtomicModel:
    """A ~200 Å globular particle: three rotated, 1.5× scaled apoferritin shells."""
    base = simulate.apoferritin_like_model(seed=0)
    rotations = euler_to_matrix(np.array([0.0, 37.0, 71.0]), np.array([0.0, 53.0, 101.0]),
                                np.array([0.0, 19.0, 143.0]))
    coords = np.concatenate([1.5 * base.coords_angstroms @ r.T for r in rotations])
    numbers = np.tile(base.atomic_numbers, 3)
    return simulate.AtomicModel(coords, numbers, name="apoferritin x1.5, x3")


def _small_model() -> simulate.AtomicModel:
    """A ~120 Å globular particle: apoferritin scaled by 120/135, keeping its density."""
    base = simulate.apoferritin_like_model(seed=0)
    scale = 120.0 / 135.0
    keep = np.random.default_rng(0).random(base.atomic_numbers.size) < scale**3
    return simulate.AtomicModel(scale * base.coords_angstroms[keep], base.atomic_numbers[keep],
                                name="apoferritin x0.89")


def _globule_model(diameter: float = 120.0) -> simulate.AtomicModel:
    """A solid globular particle: C/N/O atoms at protein density (0.062 Å⁻³) in a sphere."""
    rng = np.random.default_rng(0)
    radius = 0.5 * diameter
    count = int(0.062 * 4.0 / 3.0 * math.pi * radius**3)
    points = rng.uniform(-radius, radius, size=(3 * count, 3))
    points = points[np.linalg.norm(points, axis=1) <= radius][:count]
    numbers = rng.choice([6, 7, 8], size=points.shape[0], p=[0.62, 0.18, 0.20])
    return simulate.AtomicModel(points, numbers, name=f"solid globule {diameter:.0f} Å")


def simulate_case(model, pixel_size, defocus, exposure, seed, n=SIZE):
    """Simulate one micrograph; return (image, ctf, true positions (m, 2), diameter)."""
    rng = np.random.default_rng(seed)
    diameter = 2.0 * model.radius_angstroms
    positions = simulate.random_particle_positions(
        250, (n, n), pixel_size, min_separation_angstroms=diameter + 40.0,
        edge_margin_angstroms=135.0 * pixel_size, rng=rng,
    )
    angles = random_orientations(positions.shape[0], rng)
    ctf = CTFParams(defocus_1_angstroms=defocus + 150.0, defocus_2_angstroms=defocus - 150.0,
                    astigmatism_angle_degrees=30.0)
    image, _ = simulate.simulate_micrograph(
        model, shape=(n, n), pixel_size_angstroms=pixel_size, ctf=ctf,
        positions_angstroms=positions, euler_degrees=angles, exposure_e_per_a2=exposure,
        rng=rng,
    )
    return image, ctf, positions, diameter


def score_picks(picks: picking.Picks, truth: np.ndarray, diameter: float) -> dict[str, float]:
    """Recall, precision and median position error (Å) of picks against true centres."""
    found = np.column_stack([picks.x_angstroms, picks.y_angstroms]).reshape(-1, 2)
    if found.shape[0] == 0:
        return {"recall": 0.0, "precision": 0.0, "median_error": math.inf, "n": 0}
    distance = np.sqrt(((found[:, None, :] - truth[None, :, :]) ** 2).sum(axis=-1))
    tolerance = 0.2 * diameter
    matched = distance.min(axis=1) < tolerance
    return {
        "recall": float((distance.min(axis=0) < tolerance).mean()),
        "precision": float(matched.mean()),
        "median_error": float(np.median(distance.min(axis=1)[matched])) if matched.any()
        else math.inf,
        "n": int(found.shape[0]),
    }


# (model, pixel size Å, mean defocus Å, exposure e/Å², seed)
CASES = [
    ("apoferritin", 1.5, 15000.0, 40.0, 3),
    ("apoferritin", 1.0, 25000.0, 50.0, 4),
    ("apoferritin", 1.25, 20000.0, 30.0, 5),
    ("big", 1.5, 15000.0, 30.0, 6),
    ("big", 1.0, 20000.0, 40.0, 7),
    ("big", 1.5, 8000.0, 30.0, 41),
    ("big", 1.25, 25000.0, 50.0, 44),
    ("small", 1.5, 8000.0, 30.0, 50),
    ("small", 1.0, 15000.0, 30.0, 51),
    ("globule", 1.0, 8000.0, 30.0, 20),
]


@pytest.fixture(scope="module")
def models():
    return {"apoferritin": simulate.apoferritin_like_model(seed=0), "big": _big_model(),
            "small": _small_model(), "globule": _globule_model()}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}A-{c[2]:.0f}df-{c[3]:.0f}e"
                                             for c in CASES])
def test_default_parameters_find_the_particles(models, case):
    name, pixel, defocus, exposure, seed = case
    image, ctf, truth, diameter = simulate_case(models[name], pixel, defocus, exposure, seed)
    picks = picking.find_particles(image, pixel_size_angstroms=pixel, ctf=ctf)
    figures = score_picks(picks, truth, diameter)
    assert figures["recall"] >= 0.9, figures
    assert figures["precision"] >= 0.9, figures
    assert figures["median_error"] <= 5.0, figures


@pytest.mark.slow
def test_near_focus_small_particles_over_several_micrographs(models):
    """The hardest corner of the range: 135 Å particles, 0.8 µm, 1 Å/px, 30 e/Å².

    Each crowded 2048² micrograph holds only ~70 particles, so one micrograph's
    recall moves by ±0.05 with the noise; six are pooled. (120 Å particles in
    the same corner reach only ~0.84: see the closing note of the issue.)
    """
    found = total = correct = picked = 0.0
    for seed in (20, 30, 31, 32, 33, 8):
        image, ctf, truth, diameter = simulate_case(models["apoferritin"], 1.0, 8000.0, 30.0,
                                                    seed)
        figures = score_picks(picking.find_particles(image, pixel_size_angstroms=1.0, ctf=ctf),
                              truth, diameter)
        assert figures["recall"] >= 0.8 and figures["median_error"] <= 5.0, (seed, figures)
        found += figures["recall"] * len(truth)
        total += len(truth)
        correct += figures["precision"] * figures["n"]
        picked += figures["n"]
    assert found / total >= 0.9 and correct / picked >= 0.9, (found / total, correct / picked)


@pytest.mark.slow
def test_score_is_in_sigma_of_the_background_between_particles(models):
    # Crowded micrographs near focus: away from every particle (and from the edges,
    # where the correlation wraps around) the score must be zero-mean with unit σ,
    # although particles cover most of the area.
    samples = []
    for seed in (20, 30, 31):
        image, ctf, truth, _ = simulate_case(models["apoferritin"], 1.0, 8000.0, 30.0, seed)
        maps = picking.picking_maps(image, pixel_size_angstroms=1.0, ctf=ctf)
        ny, nx = maps.score.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        x = xx * maps.pixel_size_x_angstroms
        y = yy * maps.pixel_size_y_angstroms
        distance = np.full(maps.score.shape, np.inf)
        for tx, ty in truth:
            np.minimum(distance, np.hypot(x - tx, y - ty), out=distance)
        side = image.shape[0] * 1.0
        interior = (x > 250.0) & (y > 250.0) & (x < side - 250.0) & (y < side - 250.0)
        samples.append(maps.score[(distance > 150.0) & interior & ~maps.excluded])
    far = np.concatenate(samples)
    assert far.size > 1000
    assert abs(float(far.mean())) < 0.15 and 0.9 < float(far.std()) < 1.1, (far.mean(), far.std())


def test_pure_noise_gives_no_picks():
    rng = np.random.default_rng(0)
    image = rng.poisson(40.0, size=(1024, 1024)).astype(np.float32)
    ctf = CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0)
    picks = picking.find_particles(image, pixel_size_angstroms=1.0, ctf=ctf)
    assert len(picks) <= 1


@pytest.mark.slow
def test_white_protein_is_found_only_with_the_right_polarity(models):
    image, ctf, truth, diameter = simulate_case(models["apoferritin"], 1.5, 20000.0, 40.0, 9)
    inverted = 2.0 * float(image.mean()) - image.astype(np.float32)
    white = picking.PickingParams(particles_are_white=True)
    right = score_picks(picking.find_particles(inverted, pixel_size_angstroms=1.5, ctf=ctf,
                                               params=white), truth, diameter)
    wrong = score_picks(picking.find_particles(inverted, pixel_size_angstroms=1.5, ctf=ctf),
                        truth, diameter)
    assert right["recall"] >= 0.8
    assert wrong["recall"] < 0.3


def test_picks_respect_edges_exclusion_and_order(models):
    image, ctf, _truth, _diameter = simulate_case(models["apoferritin"], 1.5, 20000.0, 40.0, 10,
                                                n=1024)
    params = picking.PickingParams(minimum_distance_from_edges_px=200)
    picks = picking.find_particles(image, pixel_size_angstroms=1.5, ctf=ctf, params=params)
    assert len(picks) > 0
    limit = 200 * 1.5
    top = (1024 - 1) * 1.5 - limit
    assert np.all(picks.x_angstroms >= limit) and np.all(picks.x_angstroms <= top)
    assert np.all(picks.y_angstroms >= limit) and np.all(picks.y_angstroms <= top)
    assert np.all(np.diff(picks.peak_height) <= 0)
    assert np.all(picks.peak_height >= params.threshold_sigma)
    xy = np.column_stack([picks.x_angstroms, picks.y_angstroms])
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= params.maximum_radius_angstroms


def test_resampled_shape_and_parameters():
    assert picking.resampled_shape((4096, 4096), 1.0, 30.0) == (288, 288)
    my, mx = picking.resampled_shape((3000, 4000), 1.0, 30.0)
    assert my % 2 == 0 and mx % 2 == 0 and my >= 200 and abs(mx / my - 4 / 3) < 0.02
    assert picking.resampled_shape((100, 100), 20.0, 30.0) == (100, 100)
    with pytest.raises(ValueError, match="background_algorithm"):
        picking.PickingParams(background_algorithm="median")
    with pytest.raises(ValueError, match="maximum_radius"):
        picking.PickingParams(maximum_radius_angstroms=0.0)
    with pytest.raises(ValueError, match="2-D"):
        picking.find_particles(np.zeros(10), pixel_size_angstroms=1.0,
                               ctf=CTFParams(defocus_1_angstroms=1e4, defocus_2_angstroms=1e4))
    radii = picking.template_radii_angstroms(picking.PickingParams(), 15.0)
    assert radii[0] == pytest.approx(48.0) and radii[-1] == pytest.approx(112.0)
