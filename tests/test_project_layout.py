"""Project directory layout and cisTEM's file naming (reference §3.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cistemd.project.layout import ASSET_SUBDIRECTORIES, ProjectLayout, make_directories


@pytest.fixture
def layout(tmp_path: Path) -> ProjectLayout:
    return ProjectLayout(tmp_path / "apoferritin", "apoferritin")


def test_database_and_lock_names(layout: ProjectLayout) -> None:
    assert layout.db_path == layout.root / "apoferritin.db"
    assert layout.lock_path == layout.root / "apoferritin.db.lock"


def test_make_directories_creates_cistem_tree(layout: ProjectLayout) -> None:
    make_directories(layout)
    for sub in (
        "Assets/Movies", "Assets/Images/Spectra", "Assets/Images/Scaled", "Assets/CTF",
        "Assets/ParticlePosition", "Assets/ParticleStacks", "Assets/ClassAverages",
        "Assets/Volumes/OrthViews", "Assets/Parameters", "Assets/TemplateMatching",
        "Assets/PhaseDifferenceImages", "Scratch",
    ):
        assert (layout.root / sub).is_dir(), sub
    assert len(layout.directories()) == len(ASSET_SUBDIRECTORIES)
    make_directories(layout)  # idempotent


def test_aligned_sum_family(layout: ProjectLayout) -> None:
    # cisTEM: "/%s_%i_%i.mrc" with the movie name without extension, asset id, previous runs
    sums = layout.aligned_sum_path("/data/movies/FoilHole_123_fractions.tiff", 17, 0)
    assert sums == layout.root / "Assets/Images/FoilHole_123_fractions_17_0.mrc"
    assert layout.amplitude_spectrum_path("m.mrc", 3, 2) == (
        layout.root / "Assets/Images/Spectra/m_3_2.mrc"
    )
    assert layout.scaled_sum_path("m.mrc", 3, 2) == layout.root / "Assets/Images/Scaled/m_3_2.mrc"
    # one extension is dropped, as wxFileName::GetName() does
    assert layout.aligned_sum_path("a.b.mrc", 1, 0).name == "a.b_1_0.mrc"


def test_ctf_and_picking_names(layout: ProjectLayout) -> None:
    assert layout.ctf_diagnostic_path("/x/mic_5_0.mrc", 1) == (
        layout.root / "Assets/CTF/mic_5_0_CTF_1.mrc"
    )
    assert layout.ctf_output_text_path("mic.mrc", 0).name == "mic_CTF_0.txt"
    assert layout.ctf_avrot_path("mic.mrc", 0).name == "mic_CTF_0_avrot.txt"
    assert layout.picked_particles_stack_path("mic.mrc", 2) == (
        layout.root / "Assets/ParticlePosition/mic_COOS_2.mrc"
    )


def test_refinement_names(layout: ProjectLayout) -> None:
    assert layout.particle_stack_path(4) == (
        layout.root / "Assets/ParticleStacks/particle_stack_4.mrc"
    )
    # the cisTEM FAQ: class_averages_0004.mrc corresponds with Classification #4
    assert layout.class_averages_path(4).name == "class_averages_0004.mrc"
    assert layout.class_averages_path(12345).name == "class_averages_12345.mrc"
    assert layout.volume_path(7, 2) == layout.root / "Assets/Volumes/volume_7_2.mrc"
    assert layout.startup_volume_path(2, 1).name == "startup_volume_2_1.mrc"
    assert layout.generate3d_volume_path(3, 7, 1).name == "generate3d_volume_3_7_1.mrc"
    assert layout.generate3d_volume_path(3, 7, 1, half_map=2).name == (
        "generate3d_volume_3_7_1_map2.mrc"
    )
    assert layout.orth_view_path(layout.volume_path(7, 2)) == (
        layout.root / "Assets/Volumes/OrthViews/volume_7_2.mrc"
    )


def test_parameter_file_names(layout: ProjectLayout) -> None:
    assert layout.parameters_path(7, 1) == layout.root / "Assets/Parameters/input_par_7_1.cistem"
    assert layout.parameters_path(7, 2, prefix="auto_input_par", extension=".star").name == (
        "auto_input_par_7_2.star"
    )
    assert layout.statistics_path(7, 1).name == "input_stats_7_1.txt"
    assert layout.statistics_path(3, 1, prefix="startup_input_stats").name == (
        "startup_input_stats_3_1.txt"
    )
    assert layout.classification_parameters_path(9).name == "classification_input_star_9.cistem"


@pytest.mark.parametrize(
    "call",
    [
        lambda lay: lay.class_averages_path(0),
        lambda lay: lay.volume_path(1, 0),
        lambda lay: lay.aligned_sum_path("m.mrc", -1, 0),
        lambda lay: lay.aligned_sum_path("m.mrc", 1, 1.5),
        lambda lay: lay.generate3d_volume_path(1, 1, 1, half_map=3),
        lambda lay: lay.parameters_path(1, 1, extension=".txt"),
        lambda lay: lay.parameters_path(1, 1, prefix="../x"),
        lambda lay: lay.scratch_path("..", "etc"),
        lambda lay: lay.aligned_sum_path("", 1, 0),
    ],
)
def test_bad_arguments_are_refused(layout: ProjectLayout, call) -> None:
    with pytest.raises(ValueError):
        call(layout)


def test_scratch_and_bad_names(layout: ProjectLayout) -> None:
    assert layout.scratch_path("job_3", "task_1.mrc") == layout.root / "Scratch/job_3/task_1.mrc"
    for name in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            ProjectLayout(Path("/x"), name)


def test_adopt_file_moves_outputs_into_assets_and_skips_missing_ones(tmp_path):
    from cistemd.project.layout import adopt_file

    scratch = tmp_path / "Scratch" / "job_1"
    scratch.mkdir(parents=True)
    output = scratch / "sum.mrc"
    output.write_bytes(b"data")
    target = tmp_path / "Assets" / "Images" / "movie_1_0.mrc"
    assert adopt_file(str(output), target) == target
    assert target.read_bytes() == b"data" and not output.exists()
    # an optional output the task did not write is no asset and no error
    assert adopt_file(str(scratch / "absent.mrc"), tmp_path / "Assets" / "x.mrc") is None
    assert adopt_file(None, tmp_path / "Assets" / "y.mrc") is None
    assert not (tmp_path / "Assets" / "x.mrc").exists()
