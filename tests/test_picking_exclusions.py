"""Find Particles avoids carbon edges and contamination (the variance/mean exclusions).

Simulated 2048² micrographs get a carbon film beyond a hole edge and
contamination blobs (cistemd.kernels.simulate_artifacts); particles are
placed only in the clear ice. Picks on or within 40 Å of an artefact are
counted with the exclusions off and with the default exclusions: at least 90 %
of them must go, while the picks that remain stay on particles.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from cistemd.kernels import picking, simulate
from cistemd.kernels import simulate_artifacts as artifacts
from cistemd.kernels.ctf import CTFParams
from cistemd.kernels.rotation import random_orientations

N = 2048
PIXEL = 1.0
NO_EXCLUSIONS = picking.PickingParams(
    avoid_high_variance=False, avoid_low_variance=False, avoid_abnormal_local_mean=False
)


def _micrograph_with_artifacts(seed: int):
    rng = np.random.default_rng(seed)
    model = simulate.apoferritin_like_model(seed=0)
    carbon = artifacts.carbon_edge_mask((N, N), PIXEL, rng=rng, carbon_fraction=0.15)
    blobs = artifacts.contamination_mask((N, N), PIXEL, rng=rng, avoid=carbon, n_blobs=2)
    distance = distance_transform_edt(np.maximum(carbon, blobs) < 0.5) * PIXEL
    positions = simulate.random_particle_positions(
        300, (N, N), PIXEL, min_separation_angstroms=175.0, edge_margin_angstroms=135.0, rng=rng
    )
    ix = (positions / PIXEL).astype(int)
    positions = positions[distance[ix[:, 1], ix[:, 0]] > 90.0]
    ctf = CTFParams(defocus_1_angstroms=15150.0, defocus_2_angstroms=14850.0,
                    astigmatism_angle_degrees=30.0)
    expected, _ = simulate.simulate_micrograph(
        model, shape=(N, N), pixel_size_angstroms=PIXEL, ctf=ctf, positions_angstroms=positions,
        euler_degrees=random_orientations(positions.shape[0], rng), exposure_e_per_a2=40.0,
        rng=rng, shot_noise=False,
    )
    image, masks = artifacts.add_artifacts(
        expected, pixel_size_angstroms=PIXEL, ctf=ctf, rng=rng, carbon=carbon,
        contamination=blobs,
    )
    return image, ctf, positions, distance, masks


def _on_artifact(picks: picking.Picks, distance: np.ndarray) -> np.ndarray:
    jx = np.clip((picks.x_angstroms / PIXEL).astype(int), 0, N - 1)
    jy = np.clip((picks.y_angstroms / PIXEL).astype(int), 0, N - 1)
    return distance[jy, jx] < 40.0


@pytest.fixture(scope="module")
def runs():
    out = []
    for seed in (1, 2, 3):
        image, ctf, truth, distance, masks = _micrograph_with_artifacts(seed)
        off = picking.find_particles(image, pixel_size_angstroms=PIXEL, ctf=ctf,
                                     params=NO_EXCLUSIONS)
        on = picking.find_particles(image, pixel_size_angstroms=PIXEL, ctf=ctf)
        out.append((off, on, truth, distance, masks))
    return out


@pytest.mark.slow
def test_exclusions_remove_picks_on_carbon_and_contamination(runs):
    before = sum(int(_on_artifact(off, d).sum()) for off, _, _, d, _ in runs)
    after = sum(int(_on_artifact(on, d).sum()) for _, on, _, d, _ in runs)
    assert before >= 30, "the artefacts should attract picks when nothing is excluded"
    assert after <= 0.1 * before, (before, after)


@pytest.mark.slow
def test_picks_kept_beside_artifacts_are_particles(runs):
    for _, on, truth, _, _ in runs:
        found = np.column_stack([on.x_angstroms, on.y_angstroms])
        assert found.shape[0] >= 15
        distance = np.sqrt(((found[:, None] - truth[None]) ** 2).sum(-1)).min(axis=1)
        assert (distance < 27.0).mean() >= 0.9


def test_artifact_masks_and_counts():
    rng = np.random.default_rng(0)
    carbon = artifacts.carbon_edge_mask((256, 256), 4.0, rng=rng, carbon_fraction=0.3)
    assert 0.15 < float((carbon > 0.5).mean()) < 0.45
    blobs = artifacts.contamination_mask((256, 256), 4.0, rng=rng, n_blobs=2, avoid=carbon)
    assert float(blobs.max()) == pytest.approx(1.0)
    assert float((blobs > 0.5)[carbon > 0.5].mean()) < 0.2
    flat = np.full((256, 256), 40.0)
    ctf = CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0)
    counts, masks = artifacts.add_artifacts(flat, pixel_size_angstroms=4.0, ctf=ctf, rng=rng,
                                            carbon=carbon, contamination=blobs)
    assert counts.dtype == np.uint16
    clear = (masks.any < 0.01)
    assert counts[clear].mean() == pytest.approx(40.0, rel=0.05)
    assert counts[blobs > 0.99].mean() < 0.5 * counts[clear].mean()
    assert counts[carbon > 0.99].mean() < 0.9 * counts[clear].mean()
