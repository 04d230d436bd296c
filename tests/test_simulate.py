"""The simulator's physics: CTF zeros, dose, drift, gain, particle placement, symmetry."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cistemd.errors import InvalidInputError
from cistemd.kernels import simulate as S
from cistemd.kernels.ctf import CTFParams, ctf_zero_frequencies
from cistemd.kernels.fourier import radial_frequency, spatial_frequency_grid
from cistemd.kernels.rotation import euler_to_matrix, random_orientations

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NO_POSITIONS = np.zeros((0, 2))
NO_ANGLES = np.zeros((0, 3))


@pytest.fixture(scope="module")
def asymmetric():
    return S.asymmetric_protein_model()


@pytest.fixture(scope="module")
def apoferritin():
    return S.apoferritin_like_model()


def _power_spectrum_of_ice(ctf, n, pixel_size, seeds):
    total = np.zeros((n, n))
    for seed in seeds:
        image, _ = S.simulate_micrograph(
            S.AtomicModel(np.zeros((0, 3)), np.zeros(0, dtype=int)),
            shape=(n, n),
            pixel_size_angstroms=pixel_size,
            ctf=ctf,
            positions_angstroms=NO_POSITIONS,
            euler_degrees=NO_ANGLES,
            exposure_e_per_a2=40.0,
            rng=np.random.default_rng(seed),
            shot_noise=False,
            radiation_damage=False,
            envelope_b_factor_angstroms2=0.0,
        )
        total += np.abs(np.fft.fft2(image - image.mean())) ** 2
    return total


def _local_minima(profile):
    inner = profile[1:-1]
    return np.flatnonzero((inner < profile[:-2]) & (inner < profile[2:])) + 1


def _matched(zeros_bins, minima):
    return np.array([np.min(np.abs(minima - z)) <= 1.0 for z in zeros_bins])


def test_rotational_average_has_minima_at_the_ctf_zeros():
    n, pixel_size = 512, 1.0
    ctf = CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0)
    power = _power_spectrum_of_ice(ctf, n, pixel_size, seeds=[0])
    bins = np.round(radial_frequency((n, n), pixel_size) * n * pixel_size).astype(int).ravel()
    profile = np.bincount(bins, power.ravel()) / np.bincount(bins)
    minima = _local_minima(profile)
    zeros = ctf_zero_frequencies(ctf, azimuth_degrees=None, max_frequency_per_angstrom=0.3)
    zeros_bins = zeros * n * pixel_size
    assert zeros.size >= 20
    assert _matched(zeros_bins, minima).all()
    # The minima are deep: power at a zero is far below the maxima around it.
    for low, high in itertools.pairwise(zeros_bins):
        middle = profile[round((low + high) / 2)]
        assert profile[round(low)] < 0.5 * middle
    # Negative control: another defocus's zeros do not line up.
    other = ctf_zero_frequencies(
        CTFParams(defocus_1_angstroms=16500.0, defocus_2_angstroms=16500.0),
        azimuth_degrees=None,
        max_frequency_per_angstrom=0.3,
    )
    assert _matched(other * n * pixel_size, minima).mean() < 0.7


def test_astigmatic_zeros_along_their_azimuths():
    n, pixel_size = 512, 1.0
    ctf = CTFParams(
        defocus_1_angstroms=16000.0, defocus_2_angstroms=14000.0, astigmatism_angle_degrees=30.0
    )
    power = _power_spectrum_of_ice(ctf, n, pixel_size, seeds=[1, 2])
    ky, kx = spatial_frequency_grid((n, n), pixel_size)
    azimuth = np.degrees(np.arctan2(ky, kx))
    bins = np.round(np.hypot(kx, ky) * n * pixel_size).astype(int)
    for direction in (30.0, 120.0):  # df1 along 30 degrees from x (towards +y), df2 across
        wedge = np.abs((azimuth - direction + 90.0) % 180.0 - 90.0) < 6.0
        counts = np.maximum(np.bincount(bins[wedge], minlength=n), 1)
        profile = np.bincount(bins[wedge], power[wedge], minlength=n) / counts
        minima = _local_minima(profile)
        right = ctf_zero_frequencies(
            ctf, azimuth_degrees=direction, max_frequency_per_angstrom=0.25
        )
        wrong = ctf_zero_frequencies(
            ctf, azimuth_degrees=direction + 90.0, max_frequency_per_angstrom=0.25
        )
        assert _matched(right * n * pixel_size, minima).all()
        assert _matched(wrong * n * pixel_size, minima).mean() < 0.6


@pytest.mark.parametrize("ice", [0.0, 300.0])
@pytest.mark.parametrize("pixel_size", [0.8, 1.3])
def test_blank_frames_count_the_dose(asymmetric, ice, pixel_size):
    dose = 1.5
    frames, truth = S.simulate_movie(
        asymmetric,
        shape=(256, 256),
        pixel_size_angstroms=pixel_size,
        ctf=CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0),
        positions_angstroms=NO_POSITIONS,
        euler_degrees=NO_ANGLES,
        n_frames=4,
        exposure_per_frame_e_per_a2=dose,
        rng=np.random.default_rng(5),
        ice_thickness_angstroms=ice,
    )
    assert frames.dtype == np.uint16 and frames.shape == (4, 256, 256)
    expected = dose * pixel_size**2
    assert truth["mean_counts_per_pixel_per_frame"] == pytest.approx(expected)
    standard_error = math.sqrt(expected / frames.size)
    assert abs(frames.mean() - expected) < 4 * standard_error
    # Shot noise is Poisson: variance = mean (plus the small ice contrast).
    assert frames.var() / frames.mean() == pytest.approx(1.0, abs=0.02)


def _measure_shift(reference, image, search=1.5, step=0.01):
    """Return (dx, dy) px with image(x) ~ reference(x - d), by upsampled cross-correlation."""
    n = reference.shape[0]
    window = np.outer(np.hanning(n), np.hanning(n))
    product = np.conj(np.fft.fft2((reference - reference.mean()) * window)) * np.fft.fft2(
        (image - image.mean()) * window
    )
    correlation = np.fft.ifft2(product).real
    iy, ix = np.unravel_index(np.argmax(correlation), correlation.shape)
    iy, ix = (iy + n // 2) % n - n // 2, (ix + n // 2) % n - n // 2
    k = np.fft.fftfreq(n)
    offsets = np.arange(-search, search + step / 2, step)
    rows = np.exp(2j * np.pi * np.outer(iy + offsets, k))
    columns = np.exp(2j * np.pi * np.outer(k, ix + offsets))
    fine = (rows @ product @ columns).real
    j, i = np.unravel_index(np.argmax(fine), fine.shape)
    return np.array([ix + offsets[i], iy + offsets[j]])


def test_drift_is_applied_as_stated(asymmetric):
    n, pixel_size, n_frames = 256, 1.5, 7
    rng = np.random.default_rng(3)
    positions = S.random_particle_positions(
        6, (n, n), pixel_size, min_separation_angstroms=100, edge_margin_angstroms=60, rng=rng
    )
    shifts = S.beam_induced_drift(n_frames, drift_angstroms=9.0, rng=rng, jitter_angstroms=0.3)
    frames, truth = S.simulate_movie(
        asymmetric,
        shape=(n, n),
        pixel_size_angstroms=pixel_size,
        ctf=CTFParams(
            defocus_1_angstroms=12000.0, defocus_2_angstroms=11000.0, astigmatism_angle_degrees=20.0
        ),
        positions_angstroms=positions,
        euler_degrees=random_orientations(len(positions), rng),
        n_frames=n_frames,
        exposure_per_frame_e_per_a2=1.0,
        rng=rng,
        frame_shifts_angstroms=shifts,
        shot_noise=False,
    )
    middle = truth["middle_frame_index"]
    assert middle == n_frames // 2
    np.testing.assert_allclose(truth["frame_shifts_angstroms"], shifts)
    relative = np.array(truth["frame_shifts_relative_to_middle_angstroms"])
    np.testing.assert_allclose(relative, shifts - shifts[middle])
    assert np.abs(relative).max() / pixel_size > 2.0  # a real test of sub-pixel accuracy
    for i in range(n_frames):
        measured = _measure_shift(frames[middle], frames[i])
        np.testing.assert_allclose(measured, relative[i] / pixel_size, atol=0.1)
    # Absolute shifts: frame i shows the specimen displaced by shifts[i] from the truth frame.
    reference, _ = S.simulate_movie(
        asymmetric,
        shape=(n, n),
        pixel_size_angstroms=pixel_size,
        ctf=CTFParams(
            defocus_1_angstroms=12000.0, defocus_2_angstroms=11000.0, astigmatism_angle_degrees=20.0
        ),
        positions_angstroms=positions,
        euler_degrees=np.array([[p["phi"], p["theta"], p["psi"]] for p in truth["particles"]]),
        n_frames=1,
        exposure_per_frame_e_per_a2=1.0,
        rng=np.random.default_rng(3),  # only particles matter: ice differs, it is weak
        ice_thickness_angstroms=0.0,
        shot_noise=False,
        radiation_damage=False,
    )
    measured = _measure_shift(reference[0], frames[0])
    np.testing.assert_allclose(measured, shifts[0] / pixel_size, atol=0.25)


def test_beam_induced_drift_trajectory():
    rng = np.random.default_rng(9)
    shifts = S.beam_induced_drift(30, drift_angstroms=20.0, rng=rng, jitter_angstroms=0.0)
    assert shifts.shape == (30, 2)
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1)
    assert steps[:10].sum() > 2.0 * steps[-10:].sum()  # larger motion early
    path = np.linalg.norm(shifts[-1] - shifts[0])
    assert 10.0 < path < 20.0
    assert np.all(np.isfinite(shifts))
    assert np.allclose(S.beam_induced_drift(5, drift_angstroms=0.0, rng=rng, jitter_angstroms=0), 0)


def test_gain_reference_undoes_the_sensitivity(asymmetric):
    n = 128
    rng = np.random.default_rng(7)
    sensitivity, gain, defects = S.detector_sensitivity(
        (n, n), rng, n_dead_columns=2, n_hot_columns=1
    )
    live = sensitivity > 0
    assert 0.8 <= sensitivity[live & (sensitivity < 2)].min() and sensitivity[live].max() <= 3.0
    assert len(defects["dead_columns"]) == 2 and len(defects["hot_columns"]) == 1
    assert np.all(sensitivity[:, defects["dead_columns"]] == 0)
    assert np.all(gain[:, defects["dead_columns"]] == 0)
    np.testing.assert_allclose(gain[live] * sensitivity[live], 1.0, rtol=1e-6)
    kwargs = {
        "shape": (n, n),
        "pixel_size_angstroms": 1.0,
        "ctf": CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0),
        "positions_angstroms": NO_POSITIONS,
        "euler_degrees": NO_ANGLES,
        "n_frames": 20,
        "exposure_per_frame_e_per_a2": 10.0,
        "ice_thickness_angstroms": 0.0,
    }
    # Noise-free: the gain reference restores the flat field exactly.
    expected, _ = S.simulate_movie(
        asymmetric,
        rng=np.random.default_rng(1),
        detector_sensitivity_map=sensitivity,
        shot_noise=False,
        **kwargs,
    )
    np.testing.assert_allclose((expected * gain)[:, live], 10.0, rtol=1e-5)
    # With shot noise the corrected frames no longer carry the sensitivity pattern.
    raw, truth = S.simulate_movie(
        asymmetric, rng=np.random.default_rng(2), detector_sensitivity_map=sensitivity, **kwargs
    )
    assert truth["gain_applied"]
    total = raw.astype(np.float64).mean(axis=0)
    regular = live & (sensitivity < 2.0)
    raw_correlation = np.corrcoef(total[regular], sensitivity[regular])[0, 1]
    corrected_correlation = np.corrcoef((total * gain)[regular], sensitivity[regular])[0, 1]
    assert raw_correlation > 0.5
    assert abs(corrected_correlation) < 0.03
    assert (total * gain)[regular].mean() == pytest.approx(10.0, rel=0.01)
    assert np.all(raw[:, :, defects["dead_columns"]] == 0)


def _disc_means(image, positions_px, radius_px):
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array(
        [image[(xx - x) ** 2 + (yy - y) ** 2 <= radius_px**2].mean() for x, y in positions_px]
    )


def test_particles_appear_where_the_truth_says(apoferritin):
    n, pixel_size = 384, 2.0
    rng = np.random.default_rng(11)
    positions = S.random_particle_positions(
        12, (n, n), pixel_size, min_separation_angstroms=150, edge_margin_angstroms=80, rng=rng
    )
    assert len(positions) >= 8
    image, truth = S.simulate_micrograph(
        apoferritin,
        shape=(n, n),
        pixel_size_angstroms=pixel_size,
        ctf=CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0),
        positions_angstroms=positions,
        euler_degrees=random_orientations(len(positions), rng),
        exposure_e_per_a2=40.0,
        rng=rng,
        shot_noise=False,
    )
    assert truth["n_particles"] == len(positions)
    truth_xy = np.array([[p["x_angstroms"], p["y_angstroms"]] for p in truth["particles"]])
    np.testing.assert_allclose(truth_xy, positions)
    low = ndimage.gaussian_filter(image.astype(np.float64), 4.0)
    radius = 50.0 / pixel_size
    at_particles = _disc_means(low, truth_xy / pixel_size, radius)
    # Background: positions at least a particle diameter from every particle.
    grid = np.stack(np.meshgrid(np.arange(40, n - 40, 8), np.arange(40, n - 40, 8)), -1)
    grid = grid.reshape(-1, 2).astype(float)
    far = np.min(np.linalg.norm(grid[:, None] - truth_xy[None] / pixel_size, axis=2), axis=1)
    background = _disc_means(low, grid[far > 140 / pixel_size], radius)
    assert background.size >= 5
    spread = background.std() + 1e-3 * abs(background.mean())
    # Underfocus: a protein in ice is darker than the ice around it at low resolution.
    assert np.all(at_particles < background.mean() - 5 * spread)
    # Swapping x and y (the wrong axis convention) loses most of the particles.
    swapped = _disc_means(low, truth_xy[:, ::-1] / pixel_size, radius)
    assert np.median(swapped) > np.median(at_particles) + 3 * spread


def test_a_model_point_lands_at_R_r():
    atom = S.AtomicModel(np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]), np.array([6, 6]))
    for angles in [(0, 0, 0), (90, 0, 0), (0, 90, 0), (30, 60, 200)]:
        image = S.project_model(
            atom, angles, shape=(64, 64), pixel_size_angstroms=1.0, b_factor_angstroms2=10.0
        )
        projected = euler_to_matrix(*angles) @ atom.coords_angstroms.T  # (3, 2)
        for x, y in projected[:2].T:
            iy, ix = round(32 + y), round(32 + x)
            patch = image[iy - 3 : iy + 4, ix - 3 : ix + 4]
            assert patch.max() > 0.5 * image.max()


def test_projection_matches_the_rotated_map(asymmetric):
    box, pixel_size, angles = 96, 2.0, (30.0, 50.0, 70.0)
    volume = S.coulomb_potential_map(
        asymmetric, box=box, pixel_size_angstroms=pixel_size, b_factor_angstroms2=30.0
    )
    rotation = euler_to_matrix(*angles)
    centre = box // 2
    zz, yy, xx = np.mgrid[:box, :box, :box] - centre
    image_frame = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(np.float64)
    model_frame = image_frame @ rotation  # rows: R^T r'
    sampled = ndimage.map_coordinates(
        volume,
        [model_frame[:, 2] + centre, model_frame[:, 1] + centre, model_frame[:, 0] + centre],
        order=1,
    ).reshape(box, box, box)
    from_map = sampled.sum(axis=0) * pixel_size

    def projection(euler):
        return S.project_model(
            asymmetric,
            euler,
            shape=(box, box),
            pixel_size_angstroms=pixel_size,
            b_factor_angstroms2=30.0,
            solvent_exclusion=True,
        )

    assert np.corrcoef(from_map.ravel(), projection(angles).ravel())[0, 1] > 0.95
    assert np.corrcoef(from_map.ravel(), projection((70.0, 50.0, 30.0)).ravel())[0, 1] < 0.8
    assert np.corrcoef(from_map.ravel(), projection((-30.0, -50.0, -70.0)).ravel())[0, 1] < 0.8


def test_density_from_atoms_position_and_integral():
    coords = np.array([[6.0, -4.0, 10.0]])
    volume = S.density_from_atoms(
        coords, np.array([100.0]), box=48, pixel_size_angstroms=2.0, b_factor=40.0
    )
    assert volume.shape == (48, 48, 48) and volume.dtype == np.float32
    assert volume.sum() * 2.0**3 == pytest.approx(100.0, rel=1e-4)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    total = volume.sum()
    centroid = [(volume * a).sum() / total for a in (xx, yy, zz)]
    np.testing.assert_allclose(centroid, [24 + 3.0, 24 - 2.0, 24 + 5.0], atol=0.02)
    with pytest.raises(ValueError, match="weights"):
        S.density_from_atoms(coords, np.ones(2), box=8, pixel_size_angstroms=1.0)


def test_apoferritin_like_model_has_octahedral_symmetry(apoferritin, asymmetric):
    from scipy.spatial import cKDTree

    assert len(apoferritin.chain_names) == 24
    assert 15000 < apoferritin.n_atoms < 40000
    np.testing.assert_allclose(apoferritin.coords_angstroms.mean(axis=0), 0.0, atol=1e-9)
    radii = np.linalg.norm(apoferritin.coords_angstroms, axis=1)
    assert 35 < np.percentile(radii, 1) and np.percentile(radii, 99) < 68
    tree = cKDTree(apoferritin.coords_angstroms)
    for axis, angle in [((0, 0, 1), 90.0), ((1, 1, 1), 120.0), ((1, 1, 0), 180.0)]:
        from cistemd.kernels.rotation import rotation_about_axis

        rotated = apoferritin.coords_angstroms @ rotation_about_axis(axis, angle).T
        distance, _ = tree.query(rotated)
        assert distance.max() < 1e-6
    # No clashes between subunits.
    pairs = tree.query_pairs(2.0, output_type="ndarray")
    chains = apoferritin.chain_index
    assert not np.any(chains[pairs[:, 0]] != chains[pairs[:, 1]])

    box, pixel_size = 65, 2.5  # odd box: the centre voxel is on every symmetry axis
    volume = S.coulomb_potential_map(apoferritin, box=box, pixel_size_angstroms=pixel_size)
    scale = np.abs(volume).max()
    for turned in (
        np.rot90(volume, 1, axes=(1, 2)),  # four-fold about z
        np.rot90(volume, 1, axes=(0, 1)),  # four-fold about x
        volume.transpose(1, 2, 0),  # three-fold about (1, 1, 1)
    ):
        assert np.abs(turned - volume).max() < 1e-4 * scale
    asym = S.coulomb_potential_map(asymmetric, box=box, pixel_size_angstroms=pixel_size)
    turned = np.rot90(asym, 1, axes=(1, 2))
    assert np.corrcoef(turned.ravel(), asym.ravel())[0, 1] < 0.6


def test_asymmetric_model_is_protein_like(asymmetric):
    from scipy.spatial import cKDTree

    assert 4000 < asymmetric.n_atoms < 12000
    np.testing.assert_allclose(asymmetric.coords_angstroms.mean(axis=0), 0.0, atol=1e-9)
    assert set(np.unique(asymmetric.atomic_numbers)) <= {6, 7, 8, 16}
    assert np.all(
        cKDTree(asymmetric.coords_angstroms).query(asymmetric.coords_angstroms, k=2)[0][:, 1] > 1.0
    )
    same = S.asymmetric_protein_model()
    np.testing.assert_array_equal(same.coords_angstroms, asymmetric.coords_angstroms)
    other = S.asymmetric_protein_model(seed=1)
    assert other.n_atoms != asymmetric.n_atoms or not np.allclose(
        other.coords_angstroms, asymmetric.coords_angstroms
    )


def test_radiation_damage_follows_the_critical_exposure(asymmetric):
    assert float(S.critical_exposure_e_per_a2(0.25, 300.0)) == pytest.approx(
        0.24499 * 0.25**-1.6649 + 2.8141
    )
    assert float(S.critical_exposure_e_per_a2(0.25, 200.0)) == pytest.approx(
        0.8 * (0.24499 * 0.25**-1.6649 + 2.8141)
    )
    n, pixel_size, dose = 256, 1.0, 4.0
    frames, _ = S.simulate_movie(
        asymmetric,
        shape=(n, n),
        pixel_size_angstroms=pixel_size,
        ctf=CTFParams(defocus_1_angstroms=15000.0, defocus_2_angstroms=15000.0),
        positions_angstroms=NO_POSITIONS,
        euler_degrees=NO_ANGLES,
        n_frames=6,
        exposure_per_frame_e_per_a2=dose,
        rng=np.random.default_rng(4),
        ice_thickness_angstroms=500.0,
        shot_noise=False,
    )
    k = radial_frequency((n, n), pixel_size)
    band = (k > 0.2) & (k < 0.3)
    first = np.abs(np.fft.fft2(frames[0]))[band]
    last = np.abs(np.fft.fft2(frames[-1]))[band]
    measured = np.median(last / np.maximum(first, 1e-12))
    expected = np.median(np.exp(-0.5 * 5 * dose / S.critical_exposure_e_per_a2(k[band], 300.0)))
    assert measured == pytest.approx(expected, rel=0.05)
    assert expected < 0.5


def test_interaction_constant_and_atom_weights():
    assert S.interaction_constant_rad_per_volt_angstrom(300.0) == pytest.approx(6.526e-4, rel=1e-3)
    assert S.interaction_constant_rad_per_volt_angstrom(200.0) == pytest.approx(7.288e-4, rel=1e-3)
    weights = S.atomic_potential_weights([6, 1], implicit_hydrogens=False)
    assert weights[0] == pytest.approx(47.878 * 2.5092, rel=1e-3)
    assert S.POTENTIAL_PER_SCATTERING_LENGTH == pytest.approx(47.878, rel=1e-4)
    s = S.water_structure_factor(np.array([0.01, 1 / 3.7, 1.0]))
    assert s[0] < 0.1 and s[1] > 1.5 and s[2] == pytest.approx(1.0, abs=0.01)


def test_random_particle_positions_respect_the_constraints():
    rng = np.random.default_rng(2)
    positions = S.random_particle_positions(
        40, (300, 400), 1.5, min_separation_angstroms=60, edge_margin_angstroms=50, rng=rng
    )
    assert 10 < len(positions) <= 40
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    assert distances[np.triu_indices(len(positions), 1)].min() >= 60
    assert positions[:, 0].min() >= 50 and positions[:, 0].max() <= 399 * 1.5 - 50
    assert positions[:, 1].min() >= 50 and positions[:, 1].max() <= 299 * 1.5 - 50


def test_simulate_movie_rejects_bad_input(asymmetric):
    kwargs = {
        "shape": (64, 64),
        "pixel_size_angstroms": 1.0,
        "ctf": CTFParams(defocus_1_angstroms=10000.0, defocus_2_angstroms=10000.0),
        "n_frames": 2,
        "exposure_per_frame_e_per_a2": 1.0,
        "rng": np.random.default_rng(0),
    }
    with pytest.raises(ValueError, match="rows"):
        S.simulate_movie(
            asymmetric,
            positions_angstroms=np.zeros((2, 2)),
            euler_degrees=np.zeros((1, 3)),
            **kwargs,
        )
    with pytest.raises(ValueError, match="frame_shifts"):
        S.simulate_movie(
            asymmetric,
            positions_angstroms=NO_POSITIONS,
            euler_degrees=NO_ANGLES,
            frame_shifts_angstroms=np.zeros((3, 2)),
            **kwargs,
        )


# --------------------------------------------------------------- atomic models


def test_read_6z6u_gives_24_centred_chains():
    path = DATA / "models" / "6z6u.pdb"
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    from cistemd.io import atomic_model

    model, centre = atomic_model.read(path)
    assert len(model.chain_names) == 24
    counts = np.bincount(model.chain_index)
    assert counts.size == 24 and counts.min() > 1300 and counts.max() < 1400
    assert 30000 < model.n_atoms < 34000
    np.testing.assert_allclose(model.coords_angstroms.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(centre, [100.16, 99.99, 99.49], atol=0.02)
    assert 60.0 < model.radius_angstroms < 70.0
    assert set(np.unique(model.atomic_numbers)) >= {6, 7, 8, 16}
    # Apoferritin is octahedral: its four-fold axes run along the model's x, y, z.
    from scipy.spatial import cKDTree

    calpha = model.coords_angstroms[model.atomic_numbers == 6]
    turned = calpha @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
    assert np.median(cKDTree(calpha).query(turned)[0]) < 1.0


def test_atomic_model_reader_round_trips_mmcif_and_rejects_garbage(tmp_path):
    gemmi = pytest.importorskip("gemmi")
    structure = gemmi.Structure()
    structure.cell = gemmi.UnitCell(1, 1, 1, 90, 90, 90)
    model = gemmi.Model("1")
    chain = gemmi.Chain("Z")
    residue = gemmi.Residue()
    residue.name = "ALA"
    residue.seqid = gemmi.SeqId(1, " ")
    for name, element, xyz in [
        ("N", "N", (1, 2, 3)),
        ("CA", "C", (2, 2, 3)),
        ("O", "O", (3, 5, 3)),
    ]:
        atom = gemmi.Atom()
        atom.name = name
        atom.element = gemmi.Element(element)
        atom.pos = gemmi.Position(*xyz)
        atom.occ = 1.0
        atom.b_iso = 30.0
        residue.add_atom(atom)
    water = gemmi.Residue()
    water.name = "HOH"
    water.seqid = gemmi.SeqId(2, " ")
    oxygen = gemmi.Atom()
    oxygen.name = "O"
    oxygen.element = gemmi.Element("O")
    oxygen.pos = gemmi.Position(50, 50, 50)
    water.add_atom(oxygen)
    chain.add_residue(residue)
    chain.add_residue(water)
    model.add_chain(chain)
    structure.add_model(model)
    structure.setup_entities()
    path = tmp_path / "tiny.cif"
    structure.make_mmcif_document().write_file(str(path))

    from cistemd.io import atomic_model

    read, centre = atomic_model.read(path)
    assert read.n_atoms == 3 and read.chain_names == ("Z",)
    np.testing.assert_array_equal(read.atomic_numbers, [7, 6, 8])
    np.testing.assert_allclose(centre, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(read.b_factors_angstroms2, 30.0)
    with_water, _ = atomic_model.read(path, include_waters=True)
    assert with_water.n_atoms == 4

    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("this is not a structure\n")
    with pytest.raises(InvalidInputError, match=r"garbage\.pdb"):
        atomic_model.read(garbage)
    with pytest.raises(InvalidInputError, match="no such file"):
        atomic_model.read(tmp_path / "missing.cif")
    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    with pytest.raises(InvalidInputError, match="empty"):
        atomic_model.read(empty)
