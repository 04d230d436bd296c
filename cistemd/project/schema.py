"""The project database: cisTEM's tables, per-id views, and forward migrations.

Tables and columns carry cisTEM's names (``src/core/database_schema.h``;
reference §3.1), so the ``sqlite3`` recipes written for cisTEM projects run
unchanged on a cistemd project. Column type codes follow cisTEM: ``p``/``P``
INTEGER PRIMARY KEY, ``i``/``l`` INTEGER, ``r`` REAL, ``t`` TEXT.

Per-id tables become views
    cisTEM creates one table per group, refinement, classification ...
    (``IMAGE_GROUP_3``, ``REFINEMENT_RESULT_7_2``,
    ``REFINEMENT_PACKAGE_CONTAINED_PARTICLES_4``). Here each family is one
    normalised table keyed by the parent id (``IMAGE_GROUP_MEMBERS``,
    ``REFINEMENT_RESULTS``, ``REFINEMENT_PACKAGE_PARTICLES`` ...) with foreign
    keys that cascade, and the cisTEM name is a *view* over it, created with
    the parent row and dropped with it (:func:`create_views_for`,
    :func:`sync_dynamic_views`). Group views also accept ``INSERT`` and
    ``DELETE`` (``INSTEAD OF`` triggers), as cisTEM's own scripts write to
    ``IMAGE_GROUP_<n>`` directly. Two cisTEM quirks are kept: the member column
    of ``VOLUME_GROUP_<n>`` is ``VOLUME_POSITION_ASSET_ID`` (and of
    ``ATOMIC_COORDINATES_GROUP_<n>`` ``ATOMIC_COORDINATES_POSITION_ASSET_ID``);
    those views also offer the expected ``VOLUME_ASSET_ID`` /
    ``ATOMIC_COORDINATES_ASSET_ID`` column.

"No such row" is ``-1``
    As in cisTEM, an image with no CTF estimate has ``CTF_ESTIMATION_ID = -1``
    (likewise ``ALIGNMENT_ID``, ``PARENT_MOVIE_ID``, ``PICKING_ID`` ...), so
    recipes such as ``WHERE CTF_ESTIMATION_ID IS NOT -1`` keep working; those
    columns therefore carry no foreign key.

Units stored (cisTEM's): pixel sizes and positions in Å, voltage in kV, Cs in
mm, defocus in Å, defocus angle in degrees; ``ESTIMATED_CTF_PARAMETERS`` phase
shifts in **radians** (CTFFIND's output), refinement tables' ``PHASE_SHIFT`` in
degrees (cisTEM ``.star``).

Migrations
    :data:`MIGRATIONS` is an ordered tuple of :class:`Migration` (version,
    description, function). The schema version is kept in ``PRAGMA
    user_version`` and in ``MASTER_SETTINGS.CURRENT_VERSION``. :func:`migrate`
    runs each pending step in its own ``BEGIN IMMEDIATE`` transaction with
    foreign-key enforcement off (so a step may rebuild a table the SQLite way)
    and checks ``PRAGMA foreign_key_check`` before committing. A later issue
    adds a step by appending ``Migration(3, "...", _migrate_to_3)``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "ASSET_KINDS",
    "DYNAMIC_TABLES",
    "LATEST_VERSION",
    "MIGRATIONS",
    "STATIC_TABLES",
    "AssetKind",
    "DynamicTable",
    "Migration",
    "MigrationError",
    "create_views_for",
    "drop_views_for",
    "dynamic_view_name",
    "migrate",
    "schema_version",
    "sync_dynamic_views",
    "table_columns",
]

_SQL_TYPES = {
    "p": "INTEGER", "P": "INTEGER", "i": "INTEGER", "l": "INTEGER", "r": "REAL", "t": "TEXT"
}


def _columns(types: str, names: str) -> tuple[tuple[str, str], ...]:
    """Pair a cisTEM type string with whitespace-separated column names."""
    split = tuple(names.split())
    if len(types) != len(split):
        raise ValueError(f"type string {types!r} does not match {len(split)} columns")
    return tuple(zip(split, types, strict=True))


# -- static tables (cisTEM names, column order and types) ------------------------------------

#: ``name -> ((column, type code), ...)`` for every table cisTEM creates at project creation.
STATIC_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "MASTER_SETTINGS": _columns(
        "pttiritt",
        "NUMBER PROJECT_DIRECTORY PROJECT_NAME CURRENT_VERSION TOTAL_CPU_HOURS TOTAL_JOBS_RUN "
        "CISTEM_VERSION_TEXT CURRENT_WORKFLOW",
    ),
    "PROCESS_LOCK": _columns("plt", "NUMBER ACTIVE_PROCESS ACTIVE_HOST"),
    "RUNNING_JOBS": _columns("pti", "JOB_NUMBER JOB_CODE MANAGER_IP_ADDRESS"),
    "RUN_PROFILES": _columns(
        "ptttti",
        "RUN_PROFILE_ID PROFILE_NAME MANAGER_RUN_COMMAND GUI_ADDRESS CONTROLLER_ADDRESS "
        "COMMANDS_ID",
    ),
    "MOVIE_ASSETS": _columns(
        "pttiiiirrrrttrirrriii",
        "MOVIE_ASSET_ID NAME FILENAME POSITION_IN_STACK X_SIZE Y_SIZE NUMBER_OF_FRAMES VOLTAGE "
        "PIXEL_SIZE DOSE_PER_FRAME SPHERICAL_ABERRATION GAIN_FILENAME DARK_FILENAME "
        "OUTPUT_BINNING_FACTOR CORRECT_MAG_DISTORTION MAG_DISTORTION_ANGLE "
        "MAG_DISTORTION_MAJOR_SCALE MAG_DISTORTION_MINOR_SCALE PROTEIN_IS_WHITE "
        "EER_SUPER_RES_FACTOR EER_FRAMES_PER_IMAGE",
    ),
    "MOVIE_ASSETS_METADATA": _columns(
        "Plttrrrrrrrl",
        "MOVIE_ASSET_METADATA_ID MOVIE_ASSET_ID METADATA_SOURCE CONTENT_JSON TILT_ANGLE "
        "STAGE_POSITION_X STAGE_POSITION_Y STAGE_POSITION_Z IMAGE_SHIFT_X IMAGE_SHIFT_Y "
        "EXPOSURE_DOSE ACQUISITION_TIME",
    ),
    "IMAGE_ASSETS": _columns(
        "pttiiiiiirrri",
        "IMAGE_ASSET_ID NAME FILENAME POSITION_IN_STACK PARENT_MOVIE_ID ALIGNMENT_ID "
        "CTF_ESTIMATION_ID X_SIZE Y_SIZE PIXEL_SIZE VOLTAGE SPHERICAL_ABERRATION PROTEIN_IS_WHITE",
    ),
    "MOVIE_GROUP_LIST": _columns("pti", "GROUP_ID GROUP_NAME LIST_ID"),
    "IMAGE_GROUP_LIST": _columns("pti", "GROUP_ID GROUP_NAME LIST_ID"),
    "PARTICLE_POSITION_GROUP_LIST": _columns("pti", "GROUP_ID GROUP_NAME LIST_ID"),
    "VOLUME_GROUP_LIST": _columns("pti", "GROUP_ID GROUP_NAME LIST_ID"),
    "ATOMIC_COORDINATES_GROUP_LIST": _columns("pti", "GROUP_ID GROUP_NAME LIST_ID"),
    "MOVIE_ALIGNMENT_LIST": _columns(
        "piiitrrrrrriiriiiiiiiir",
        "ALIGNMENT_ID DATETIME_OF_RUN ALIGNMENT_JOB_ID MOVIE_ASSET_ID OUTPUT_FILE VOLTAGE "
        "PIXEL_SIZE EXPOSURE_PER_FRAME PRE_EXPOSURE_AMOUNT MIN_SHIFT MAX_SHIFT SHOULD_DOSE_FILTER "
        "SHOULD_RESTORE_POWER TERMINATION_THRESHOLD MAX_ITERATIONS BFACTOR "
        "SHOULD_MASK_CENTRAL_CROSS HORIZONTAL_MASK VERTICAL_MASK SHOULD_INCLUDE_ALL_FRAMES_IN_SUM "
        "FIRST_FRAME_TO_SUM LAST_FRAME_TO_SUM FINAL_PIXEL_SIZE",
    ),
    "PARTICLE_PICKING_LIST": _columns(
        "piiiirrrriiiii",
        "PICKING_ID DATETIME_OF_RUN PICKING_JOB_ID PARENT_IMAGE_ASSET_ID PICKING_ALGORITHM "
        "CHARACTERISTIC_RADIUS MAXIMUM_RADIUS THRESHOLD_PEAK_HEIGHT "
        "HIGHEST_RESOLUTION_USED_IN_PICKING MIN_DIST_FROM_EDGES AVOID_HIGH_VARIANCE "
        "AVOID_HIGH_LOW_MEAN NUM_BACKGROUND_BOXES MANUAL_EDIT",
    ),
    "PARTICLE_POSITION_ASSETS": _columns(
        "piiirrrirrr",
        "PARTICLE_POSITION_ASSET_ID PARENT_IMAGE_ASSET_ID PICKING_ID PICK_JOB_ID X_POSITION "
        "Y_POSITION PEAK_HEIGHT TEMPLATE_ASSET_ID TEMPLATE_PSI TEMPLATE_THETA TEMPLATE_PHI",
    ),
    "ESTIMATED_CTF_PARAMETERS": _columns(
        "piiiirrrrirrrrririrrrrrrrrrrtiirrrrtiiiirriiir",
        "CTF_ESTIMATION_ID CTF_ESTIMATION_JOB_ID DATETIME_OF_RUN IMAGE_ASSET_ID "
        "ESTIMATED_ON_MOVIE_FRAMES VOLTAGE SPHERICAL_ABERRATION PIXEL_SIZE AMPLITUDE_CONTRAST "
        "BOX_SIZE MIN_RESOLUTION MAX_RESOLUTION MIN_DEFOCUS MAX_DEFOCUS DEFOCUS_STEP "
        "RESTRAIN_ASTIGMATISM TOLERATED_ASTIGMATISM FIND_ADDITIONAL_PHASE_SHIFT MIN_PHASE_SHIFT "
        "MAX_PHASE_SHIFT PHASE_SHIFT_STEP DEFOCUS1 DEFOCUS2 DEFOCUS_ANGLE ADDITIONAL_PHASE_SHIFT "
        "SCORE DETECTED_RING_RESOLUTION DETECTED_ALIAS_RESOLUTION OUTPUT_DIAGNOSTIC_FILE "
        "NUMBER_OF_FRAMES_AVERAGED LARGE_ASTIGMATISM_EXPECTED ICINESS TILT_ANGLE TILT_AXIS "
        "SAMPLE_THICKNESS SAMPLE_THICKNESS_JSON DETERMINE_TILT FIT_NODES FIT_NODES_1D FIT_NODES_2D "
        "FIT_NODES_LOW_LIMIT FIT_NODES_HIGH_LIMIT FIT_NODES_ROUNDED_SQUARE "
        "FIT_NODES_DOWNWEIGHT_NODES RESAMPLE_IF_NESCESSARY TARGET_PIXEL_SIZE",
    ),
    "VOLUME_ASSETS": _columns(
        "pttiriiitt",
        "VOLUME_ASSET_ID NAME FILENAME RECONSTRUCTION_JOB_ID PIXEL_SIZE X_SIZE Y_SIZE Z_SIZE "
        "HALF_MAP1_FILENAME HALF_MAP2_FILENAME",
    ),
    "ATOMIC_COORDINATES_ASSETS": _columns(
        "pttiiiitrrr",
        "ATOMIC_COORDINATES_ASSET_ID NAME FILENAME SIMULATION_3D_JOB_ID X_SIZE Y_SIZE Z_SIZE "
        "PDB_ID PDB_AVG_BFACTOR PDB_STD_BFACTOR EFFECTIVE_WEIGHT",
    ),
    "REFINEMENT_PACKAGE_ASSETS": _columns(
        "pttirtrriiii",
        "REFINEMENT_PACKAGE_ASSET_ID NAME STACK_FILENAME STACK_BOX_SIZE OUTPUT_PIXEL_SIZE SYMMETRY "
        "MOLECULAR_WEIGHT PARTICLE_SIZE NUMBER_OF_CLASSES NUMBER_OF_REFINEMENTS "
        "LAST_REFINEMENT_ID STACK_HAS_WHITE_PROTEIN",
    ),
    "TEMPLATE_MATCHES_PACKAGE_ASSETS": _columns(
        "pttii",
        "TEMPLATE_MATCHES_PACKAGE_ASSET_ID NAME STARFILE_FILENAME NUMBER_OF_MATCHES "
        "NUMER_OF_IMAGES",
    ),
    "REFINEMENT_LIST": _columns(
        "Pltillllirr",
        "REFINEMENT_ID REFINEMENT_PACKAGE_ASSET_ID NAME RESOLUTION_STATISTICS_ARE_GENERATED "
        "DATETIME_OF_RUN STARTING_REFINEMENT_ID NUMBER_OF_PARTICLES NUMBER_OF_CLASSES "
        "RESOLUTION_STATISTICS_BOX_SIZE RESOLUTION_STATISTICS_PIXEL_SIZE PERCENT_USED",
    ),
    "TEMPLATE_MATCH_LIST": _columns(
        "Ptllilllitrrrrrrrrrrrrrrrrrrrrrrittttttttttt",
        "TEMPLATE_MATCH_ID JOB_NAME DATETIME_OF_RUN TEMPLATE_MATCH_JOB_ID JOB_TYPE_CODE "
        "INPUT_TEMPLATE_MATCH_ID IMAGE_ASSET_ID REFERENCE_VOLUME_ASSET_ID IS_ACTIVE USED_SYMMETRY "
        "USED_PIXEL_SIZE USED_VOLTAGE USED_SPHERICAL_ABERRATION USED_AMPLITUDE_CONTRAST "
        "USED_DEFOCUS1 USED_DEFOCUS2 USED_DEFOCUS_ANGLE USED_PHASE_SHIFT LOW_RESOLUTION_LIMIT "
        "HIGH_RESOLUTION_LIMIT OUT_OF_PLANE_ANGULAR_STEP IN_PLANE_ANGULAR_STEP "
        "DEFOCUS_SEARCH_RANGE DEFOCUS_STEP PIXEL_SIZE_SEARCH_RANGE PIXEL_SIZE_STEP "
        "REFINEMENT_THRESHOLD USED_THRESHOLD REF_BOX_SIZE_IN_ANGSTROMS MASK_RADIUS "
        "MIN_PEAK_RADIUS XY_CHANGE_THRESHOLD EXCLUDE_ABOVE_XY_THRESHOLD MIP_OUTPUT_FILE "
        "SCALED_MIP_OUTPUT_FILE AVG_OUTPUT_FILE STD_OUTPUT_FILE PSI_OUTPUT_FILE THETA_OUTPUT_FILE "
        "PHI_OUTPUT_FILE DEFOCUS_OUTPUT_FILE PIXEL_SIZE_OUTPUT_FILE HISTOGRAM_OUTPUT_FILE "
        "PROJECTION_RESULT_OUTPUT_FILE",
    ),
    "CLASSIFICATION_LIST": _columns(
        "Plttilllirrrrrrriir",
        "CLASSIFICATION_ID REFINEMENT_PACKAGE_ASSET_ID NAME CLASS_AVERAGE_FILE "
        "REFINEMENT_WAS_IMPORTED_OR_GENERATED DATETIME_OF_RUN STARTING_CLASSIFICATION_ID "
        "NUMBER_OF_PARTICLES NUMBER_OF_CLASSES LOW_RESOLUTION_LIMIT HIGH_RESOLUTION_LIMIT "
        "MASK_RADIUS ANGULAR_SEARCH_STEP SEARCH_RANGE_X SEARCH_RANGE_Y SMOOTHING_FACTOR "
        "EXCLUDE_BLANK_EDGES AUTO_PERCENT_USED PERCENT_USED",
    ),
    "CLASSIFICATION_SELECTION_LIST": _columns(
        "Ptlllii",
        "SELECTION_ID SELECTION_NAME CREATION_DATE REFINEMENT_PACKAGE_ID CLASSIFICATION_ID "
        "NUMBER_OF_CLASSES NUMBER_OF_SELECTIONS",
    ),
    "STARTUP_LIST": _columns(
        "Pltiirriirrrir",
        "STARTUP_ID REFINEMENT_PACKAGE_ASSET_ID NAME NUMBER_OF_STARTS NUMBER_OF_CYCLES "
        "INITIAL_RES_LIMIT FINAL_RES_LIMIT AUTO_MASK AUTO_PERCENT_USED INITIAL_PERCENT_USED "
        "FINAL_PERCENT_USED MASK_RADIUS APPLY_LIKELIHOOD_BLURRING SMOOTHING_FACTOR",
    ),
    "RECONSTRUCTION_LIST": _columns(
        "Plltrrrriiiiril",
        "RECONSTRUCTION_ID REFINEMENT_PACKAGE_ID REFINEMENT_ID NAME INNER_MASK_RADIUS "
        "OUTER_MASK_RADIUS RESOLUTION_LIMIT SCORE_WEIGHT_CONVERSION SHOULD_ADJUST_SCORES "
        "SHOULD_CROP_IMAGES SHOULD_SAVE_HALF_MAPS SHOULD_LIKELIHOOD_BLUR SMOOTHING_FACTOR "
        "CLASS_NUMBER VOLUME_ASSET_ID",
    ),
    # cisTEM lists these two among its dynamic tables, but they carry no suffix.
    "MOVIE_IMPORT_DEFAULTS": _columns(
        "prrrrititirirrriii",
        "NUMBER VOLTAGE SPHERICAL_ABERRATION PIXEL_SIZE EXPOSURE_PER_FRAME "
        "MOVIES_ARE_GAIN_CORRECTED GAIN_REFERENCE_FILENAME MOVIES_ARE_DARK_CORRECTED "
        "DARK_REFERENCE_FILENAME RESAMPLE_MOVIES DESIRED_PIXEL_SIZE CORRECT_MAG_DISTORTION "
        "MAG_DISTORTION_ANGLE MAG_DISTORTION_MAJOR_SCALE MAG_DISTORTION_MINOR_SCALE "
        "PROTEIN_IS_WHITE EER_SUPER_RES_FACTOR EER_FRAMES_PER_IMAGE",
    ),
    "IMAGE_IMPORT_DEFAULTS": _columns(
        "prrri", "NUMBER VOLTAGE SPHERICAL_ABERRATION PIXEL_SIZE PROTEIN_IS_WHITE"
    ),
}

#: Foreign keys added to cisTEM's own tables: ``(table, column) -> "PARENT(COLUMN)"``.
#: Only where cisTEM never stores ``-1`` and deleting the parent removes the child.
_STATIC_FOREIGN_KEYS: dict[tuple[str, str], str] = {
    ("PARTICLE_POSITION_ASSETS", "PARENT_IMAGE_ASSET_ID"): "IMAGE_ASSETS(IMAGE_ASSET_ID)",
    ("MOVIE_ASSETS_METADATA", "MOVIE_ASSET_ID"): "MOVIE_ASSETS(MOVIE_ASSET_ID)",
    ("REFINEMENT_LIST", "REFINEMENT_PACKAGE_ASSET_ID"): (
        "REFINEMENT_PACKAGE_ASSETS(REFINEMENT_PACKAGE_ASSET_ID)"
    ),
    ("CLASSIFICATION_LIST", "REFINEMENT_PACKAGE_ASSET_ID"): (
        "REFINEMENT_PACKAGE_ASSETS(REFINEMENT_PACKAGE_ASSET_ID)"
    ),
    ("STARTUP_LIST", "REFINEMENT_PACKAGE_ASSET_ID"): (
        "REFINEMENT_PACKAGE_ASSETS(REFINEMENT_PACKAGE_ASSET_ID)"
    ),
}


def _static_table_ddl(name: str, columns: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for column, code in columns:
        sql = f"{column} {_SQL_TYPES[code]}"
        if code in "pP":
            sql += " PRIMARY KEY"
        parent = _STATIC_FOREIGN_KEYS.get((name, column))
        if parent is not None:
            sql += f" REFERENCES {parent} ON DELETE CASCADE"
        parts.append(sql)
    return f"CREATE TABLE {name} (\n    " + ",\n    ".join(parts) + "\n)"


# -- asset kinds and their groups ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetKind:
    """One kind of asset that can be grouped.

    Attributes
    ----------
    kind
        Public name (``"movie"``, ``"image"``, ``"particle_position"``,
        ``"volume"``, ``"atomic_coordinates"``).
    asset_table, asset_id
        The asset table and its primary key.
    group_list
        cisTEM's ``<KIND>_GROUP_LIST`` table.
    members_table
        The normalised membership table behind the ``<KIND>_GROUP_<n>`` views.
    view_prefix
        ``"IMAGE_GROUP_"`` etc.
    view_member_column
        cisTEM's member column in the per-group table.
    all_group_name
        Name cisTEM shows for the implicit group 0 holding every asset.
    """

    kind: str
    asset_table: str
    asset_id: str
    group_list: str
    members_table: str
    view_prefix: str
    view_member_column: str
    all_group_name: str


#: The groupable asset kinds, keyed by public name.
ASSET_KINDS: dict[str, AssetKind] = {
    k.kind: k
    for k in (
        AssetKind(
            "movie", "MOVIE_ASSETS", "MOVIE_ASSET_ID", "MOVIE_GROUP_LIST", "MOVIE_GROUP_MEMBERS",
            "MOVIE_GROUP_", "MOVIE_ASSET_ID", "All Movies",
        ),
        AssetKind(
            "image", "IMAGE_ASSETS", "IMAGE_ASSET_ID", "IMAGE_GROUP_LIST", "IMAGE_GROUP_MEMBERS",
            "IMAGE_GROUP_", "IMAGE_ASSET_ID", "All Images",
        ),
        AssetKind(
            "particle_position", "PARTICLE_POSITION_ASSETS", "PARTICLE_POSITION_ASSET_ID",
            "PARTICLE_POSITION_GROUP_LIST", "PARTICLE_POSITION_GROUP_MEMBERS",
            "PARTICLE_POSITION_GROUP_", "PARTICLE_POSITION_ASSET_ID", "All Positions",
        ),
        AssetKind(
            "volume", "VOLUME_ASSETS", "VOLUME_ASSET_ID", "VOLUME_GROUP_LIST",
            "VOLUME_GROUP_MEMBERS", "VOLUME_GROUP_", "VOLUME_POSITION_ASSET_ID", "All Volumes",
        ),
        AssetKind(
            "atomic_coordinates", "ATOMIC_COORDINATES_ASSETS", "ATOMIC_COORDINATES_ASSET_ID",
            "ATOMIC_COORDINATES_GROUP_LIST", "ATOMIC_COORDINATES_GROUP_MEMBERS",
            "ATOMIC_COORDINATES_GROUP_", "ATOMIC_COORDINATES_POSITION_ASSET_ID",
            "All Atomic Coordinates",
        ),
    )
}


def _members_table_ddl(kind: AssetKind) -> str:
    return (
        f"CREATE TABLE {kind.members_table} (\n"
        f"    GROUP_ID INTEGER NOT NULL REFERENCES {kind.group_list}(GROUP_ID) ON DELETE CASCADE,\n"
        "    MEMBER_NUMBER INTEGER NOT NULL,\n"
        f"    {kind.asset_id} INTEGER NOT NULL "
        f"REFERENCES {kind.asset_table}({kind.asset_id}) ON DELETE CASCADE,\n"
        "    PRIMARY KEY (GROUP_ID, MEMBER_NUMBER),\n"
        f"    UNIQUE (GROUP_ID, {kind.asset_id})\n"
        ") WITHOUT ROWID"
    )


def _group_view_sql(kind: AssetKind, group_id: int) -> list[str]:
    """Return the SQL of the view ``<KIND>_GROUP_<id>`` and its INSTEAD OF triggers."""
    view = f"{kind.view_prefix}{group_id}"
    columns = f"MEMBER_NUMBER, {kind.asset_id} AS {kind.view_member_column}"
    given = f"NEW.{kind.view_member_column}"
    if kind.view_member_column != kind.asset_id:
        columns += f", {kind.asset_id}"
        given = f"COALESCE(NEW.{kind.view_member_column}, NEW.{kind.asset_id})"
    next_member = (
        f"(SELECT COALESCE(MAX(MEMBER_NUMBER), 0) + 1 FROM {kind.members_table} "
        f"WHERE GROUP_ID = {group_id})"
    )
    return [
        f"CREATE VIEW {view} AS SELECT {columns} FROM {kind.members_table} "
        f"WHERE GROUP_ID = {group_id} ORDER BY MEMBER_NUMBER",
        f"CREATE TRIGGER {view}_INSERT INSTEAD OF INSERT ON {view} BEGIN "
        f"INSERT INTO {kind.members_table} (GROUP_ID, MEMBER_NUMBER, {kind.asset_id}) "
        f"VALUES ({group_id}, COALESCE(NEW.MEMBER_NUMBER, {next_member}), {given}); END",
        f"CREATE TRIGGER {view}_DELETE INSTEAD OF DELETE ON {view} BEGIN "
        f"DELETE FROM {kind.members_table} WHERE GROUP_ID = {group_id} "
        f"AND MEMBER_NUMBER = OLD.MEMBER_NUMBER; END",
    ]


# -- per-id tables other than groups ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DynamicTable:
    """A cisTEM per-id table family stored as one normalised table plus views.

    Attributes
    ----------
    view_prefix
        cisTEM's table-name prefix; the view is ``<prefix><id>`` or, with
        ``per_class``, ``<prefix><id>_<class>``.
    backing_table
        The normalised table.
    parent_table, parent_key
        The row each view belongs to (``REFINEMENT_LIST.REFINEMENT_ID`` ...).
    columns
        The view's columns, cisTEM order, with type codes; the first ``p``/``P``
        column is the key within one view.
    per_class
        One view per class ``1..NUMBER_OF_CLASSES`` of the parent row; the
        backing table then has a hidden ``CLASS_NUMBER`` column.
    """

    view_prefix: str
    backing_table: str
    parent_table: str
    parent_key: str
    columns: tuple[tuple[str, str], ...]
    per_class: bool = False

    @property
    def key_column(self) -> str:
        """The column that is unique within one view."""
        for name, code in self.columns:
            if code in "pP":
                return name
        return self.columns[0][0]

    def ddl(self) -> str:
        """``CREATE TABLE`` for the backing table."""
        lines = [
            f"{self.parent_key} INTEGER NOT NULL REFERENCES "
            f"{self.parent_table}({self.parent_key}) ON DELETE CASCADE"
        ]
        if self.per_class:
            lines.append("CLASS_NUMBER INTEGER NOT NULL")
        lines += [f"{name} {_SQL_TYPES[code]}" for name, code in self.columns]
        key = [self.parent_key] + (["CLASS_NUMBER"] if self.per_class else []) + [self.key_column]
        lines.append(f"PRIMARY KEY ({', '.join(key)})")
        return (
            f"CREATE TABLE {self.backing_table} (\n    " + ",\n    ".join(lines)
            + "\n) WITHOUT ROWID"
        )

    def view_sql(self, parent_id: int, class_number: int | None = None) -> str:
        """``CREATE VIEW`` for one parent id (and class)."""
        where = f"{self.parent_key} = {int(parent_id)}"
        if self.per_class:
            where += f" AND CLASS_NUMBER = {int(class_number or 0)}"
        names = ", ".join(name for name, _ in self.columns)
        return (
            f"CREATE VIEW {dynamic_view_name(self, parent_id, class_number)} AS "
            f"SELECT {names} FROM {self.backing_table} WHERE {where} ORDER BY {self.key_column}"
        )


#: Every per-id table family except groups (see :data:`ASSET_KINDS`).
DYNAMIC_TABLES: tuple[DynamicTable, ...] = (
    DynamicTable(
        "MOVIE_ALIGNMENT_PARAMETERS_", "MOVIE_ALIGNMENT_SHIFTS", "MOVIE_ALIGNMENT_LIST",
        "ALIGNMENT_ID", _columns("prr", "FRAME_NUMBER X_SHIFT Y_SHIFT"),
    ),
    DynamicTable(
        "RUN_PROFILE_COMMANDS_", "RUN_PROFILE_COMMAND_LINES", "RUN_PROFILES", "RUN_PROFILE_ID",
        _columns(
            "ptiiiii",
            "COMMANDS_NUMBER COMMAND_STRING NUMBER_OF_COPIES NUMBER_OF_THREADS_PER_COPY "
            "OVERRIDE_TOTAL_NUMBER_OF_COPIES OVERIDDEN_TOTAL_NUMBER_OF_COPIES DELAY_TIME_IN_MS",
        ),
    ),
    DynamicTable(
        "REFINEMENT_PACKAGE_CONTAINED_PARTICLES_", "REFINEMENT_PACKAGE_PARTICLES",
        "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID",
        # cisTEM keys this table on ORIGINAL_PARTICLE_POSITION_ASSET_ID; the stack
        # position is the key that is unique in every package, imported ones included.
        _columns(
            "iiPrrrrrrrrrri",
            "ORIGINAL_PARTICLE_POSITION_ASSET_ID PARENT_IMAGE_ASSET_ID POSITION_IN_STACK "
            "X_POSITION Y_POSITION PIXEL_SIZE DEFOCUS_1 DEFOCUS_2 DEFOCUS_ANGLE PHASE_SHIFT "
            "SPHERICAL_ABERRATION MICROSCOPE_VOLTAGE AMPLITUDE_CONTRAST ASSIGNED_SUBSET",
        ),
    ),
    DynamicTable(
        "REFINEMENT_PACKAGE_CURRENT_REFERENCES_", "REFINEMENT_PACKAGE_REFERENCES",
        "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID",
        _columns("pi", "CLASS_NUMBER VOLUME_ASSET_ID"),
    ),
    DynamicTable(
        "REFINEMENT_PACKAGE_REFINEMENTS_LIST_", "REFINEMENT_PACKAGE_REFINEMENTS",
        "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID",
        _columns("pl", "REFINEMENT_NUMBER REFINEMENT_ID"),
    ),
    DynamicTable(
        "REFINEMENT_PACKAGE_CLASSIFICATIONS_LIST_", "REFINEMENT_PACKAGE_CLASSIFICATIONS",
        "REFINEMENT_PACKAGE_ASSETS", "REFINEMENT_PACKAGE_ASSET_ID",
        _columns("pl", "CLASSIFICATION_NUMBER CLASSIFICATION_ID"),
    ),
    DynamicTable(
        "REFINEMENT_DETAILS_", "REFINEMENT_CLASS_DETAILS", "REFINEMENT_LIST", "REFINEMENT_ID",
        _columns(
            "plrrrrrrirrrrirrrrirrrrlliiilrrir",
            "CLASS_NUMBER REFERENCE_VOLUME_ASSET_ID LOW_RESOLUTION_LIMIT HIGH_RESOLUTION_LIMIT "
            "MASK_RADIUS SIGNED_CC_RESOLUTION_LIMIT GLOBAL_RESOLUTION_LIMIT GLOBAL_MASK_RADIUS "
            "NUMBER_RESULTS_TO_REFINE ANGULAR_SEARCH_STEP SEARCH_RANGE_X SEARCH_RANGE_Y "
            "CLASSIFICATION_RESOLUTION_LIMIT SHOULD_FOCUS_CLASSIFY SPHERE_X_COORD SPHERE_Y_COORD "
            "SPHERE_Z_COORD SPHERE_RADIUS SHOULD_REFINE_CTF DEFOCUS_SEARCH_RANGE "
            "DEFOCUS_SEARCH_STEP AVERAGE_OCCUPANCY ESTIMATED_RESOLUTION "
            "RECONSTRUCTED_VOLUME_ASSET_ID RECONSTRUCTION_ID SHOULD_AUTOMASK "
            "SHOULD_REFINE_INPUT_PARAMS SHOULD_USE_SUPPLIED_MASK MASK_ASSET_ID MASK_EDGE_WIDTH "
            "OUTSIDE_MASK_WEIGHT SHOULD_LOWPASS_OUTSIDE_MASK MASK_FILTER_RESOLUTION",
        ),
    ),
    DynamicTable(
        "REFINEMENT_RESULT_", "REFINEMENT_RESULTS", "REFINEMENT_LIST", "REFINEMENT_ID",
        _columns(
            "Prrrrrrrrrrrrrirrrrrrrri",
            "POSITION_IN_STACK PSI THETA PHI XSHIFT YSHIFT DEFOCUS1 DEFOCUS2 DEFOCUS_ANGLE "
            "PHASE_SHIFT OCCUPANCY LOGP SIGMA SCORE IMAGE_IS_ACTIVE PIXEL_SIZE MICROSCOPE_VOLTAGE "
            "MICROSCOPE_CS AMPLITUDE_CONTRAST BEAM_TILT_X BEAM_TILT_Y IMAGE_SHIFT_X IMAGE_SHIFT_Y "
            "ASSIGNED_SUBSET",
        ),
        per_class=True,
    ),
    DynamicTable(
        "REFINEMENT_RESOLUTION_STATISTICS_", "REFINEMENT_CLASS_STATISTICS", "REFINEMENT_LIST",
        "REFINEMENT_ID",
        _columns("prrrrr", "SHELL RESOLUTION FSC PART_FSC PART_SSNR REC_SSNR"),
        per_class=True,
    ),
    DynamicTable(
        "REFINEMENT_ANGULAR_DISTRIBUTION_", "REFINEMENT_CLASS_ANGULAR_DISTRIBUTION",
        "REFINEMENT_LIST", "REFINEMENT_ID", _columns("pr", "BIN_NUMBER NUMBER_IN_BIN"),
        per_class=True,
    ),
    DynamicTable(
        "CLASSIFICATION_RESULT_", "CLASSIFICATION_RESULTS", "CLASSIFICATION_LIST",
        "CLASSIFICATION_ID",
        _columns(
            "Prrrirrrrrrrrrrrrrr",
            "POSITION_IN_STACK PSI XSHIFT YSHIFT BEST_CLASS SIGMA LOGP PIXEL_SIZE VOLTAGE CS "
            "AMPLITUDE_CONTRAST DEFOCUS_1 DEFOCUS_2 DEFOCUS_ANGLE PHASE_SHIFT BEAM_TILT_X "
            "BEAM_TILT_Y IMAGE_SHIFT_X IMAGE_SHIFT_Y",
        ),
    ),
    DynamicTable(
        "CLASSIFICATION_SELECTION_", "CLASSIFICATION_SELECTION_MEMBERS",
        "CLASSIFICATION_SELECTION_LIST", "SELECTION_ID",
        _columns("pl", "SELECTION_NUMBER CLASS_AVERAGE_NUMBER"),
    ),
    DynamicTable(
        "STARTUP_RESULT_", "STARTUP_RESULTS", "STARTUP_LIST", "STARTUP_ID",
        _columns("pl", "CLASS_NUMBER VOLUME_ASSET_ID"),
    ),
    DynamicTable(
        "TEMPLATE_MATCH_PEAK_LIST_", "TEMPLATE_MATCH_PEAKS", "TEMPLATE_MATCH_LIST",
        "TEMPLATE_MATCH_ID",
        _columns(
            "prrrrrrrr", "PEAK_NUMBER X_POSITION Y_POSITION PSI THETA PHI DEFOCUS PIXEL_SIZE "
            "PEAK_HEIGHT",
        ),
    ),
    DynamicTable(
        "TEMPLATE_MATCH_PEAK_CHANGE_LIST_", "TEMPLATE_MATCH_PEAK_CHANGES", "TEMPLATE_MATCH_LIST",
        "TEMPLATE_MATCH_ID",
        _columns(
            "prrrrrrrrii",
            "PEAK_NUMBER X_POSITION Y_POSITION PSI THETA PHI DEFOCUS PIXEL_SIZE PEAK_HEIGHT "
            "ORIGINAL_PEAK_NUMBER NEW_PEAK_NUMBER",
        ),
    ),
)

_BY_PARENT: dict[str, list[DynamicTable]] = {}
for _spec in DYNAMIC_TABLES:
    _BY_PARENT.setdefault(_spec.parent_table, []).append(_spec)
_GROUP_LISTS = {k.group_list: k for k in ASSET_KINDS.values()}
# Longest prefix first, so that e.g. TEMPLATE_MATCH_PEAK_CHANGE_LIST_ is tried
# before a shorter prefix that it starts with.
_VIEW_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(rf"^{re.escape(prefix)}\d+(_\d+)?$")
    for prefix in sorted(
        [s.view_prefix for s in DYNAMIC_TABLES] + [k.view_prefix for k in ASSET_KINDS.values()],
        key=len,
        reverse=True,
    )
)


def dynamic_view_name(spec: DynamicTable, parent_id: int, class_number: int | None = None) -> str:
    """Return cisTEM's name of one per-id table (``REFINEMENT_RESULT_7_2`` ...)."""
    if int(parent_id) != parent_id:
        raise ValueError(f"parent id must be an integer, got {parent_id!r}")
    if spec.per_class:
        if class_number is None or int(class_number) < 1:
            raise ValueError(f"{spec.view_prefix}: a class number >= 1 is needed")
        return f"{spec.view_prefix}{int(parent_id)}_{int(class_number)}"
    return f"{spec.view_prefix}{int(parent_id)}"


def _expected_views_for(
    conn: sqlite3.Connection, parent_table: str, parent_id: int
) -> dict[str, list[str]]:
    """Return the views (name -> SQL statements) that belong to one parent row."""
    expected: dict[str, list[str]] = {}
    kind = _GROUP_LISTS.get(parent_table)
    if kind is not None:
        expected[f"{kind.view_prefix}{parent_id}"] = _group_view_sql(kind, parent_id)
    for spec in _BY_PARENT.get(parent_table, []):
        if spec.per_class:
            row = conn.execute(
                f"SELECT NUMBER_OF_CLASSES FROM {parent_table} WHERE {spec.parent_key} = ?",
                (parent_id,),
            ).fetchone()
            n_classes = int(row[0] or 0) if row else 0
            for class_number in range(1, n_classes + 1):
                name = dynamic_view_name(spec, parent_id, class_number)
                expected[name] = [spec.view_sql(parent_id, class_number)]
        else:
            expected[dynamic_view_name(spec, parent_id)] = [spec.view_sql(parent_id)]
    return expected


def _parent_key(parent_table: str) -> str:
    if parent_table in _GROUP_LISTS:
        return "GROUP_ID"
    specs = _BY_PARENT.get(parent_table)
    if not specs:
        raise ValueError(f"{parent_table} has no per-id tables")
    return specs[0].parent_key


def _existing_views(conn: sqlite3.Connection) -> dict[str, str]:
    return {
        name.upper(): sql
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
    }


def _is_dynamic_view(name: str) -> bool:
    upper = name.upper()
    return any(pattern.match(upper) for pattern in _VIEW_PATTERNS)


def create_views_for(conn: sqlite3.Connection, parent_table: str, parent_id: int) -> list[str]:
    """Create the per-id views that belong to one (new) parent row.

    Call inside the transaction that inserted the row; for ``per_class``
    families the row's ``NUMBER_OF_CLASSES`` decides how many views. Views
    that already exist with the right definition are left alone.

    Returns
    -------
    list of str
        Names of the views created.
    """
    existing = _existing_views(conn)
    created = []
    for name, statements in _expected_views_for(conn, parent_table, parent_id).items():
        current = existing.get(name)
        if current is not None:
            if _same_sql(current, statements[0]):
                continue
            conn.execute(f"DROP VIEW {name}")
        for statement in statements:
            conn.execute(statement)
        created.append(name)
    return created


def drop_views_for(conn: sqlite3.Connection, parent_table: str, parent_id: int) -> list[str]:
    """Drop every per-id view of one parent row (call with the row's deletion)."""
    _parent_key(parent_table)  # validates the table name
    names = []
    prefixes = [k.view_prefix for k in ASSET_KINDS.values() if k.group_list == parent_table]
    prefixes += [s.view_prefix for s in _BY_PARENT.get(parent_table, [])]
    for name in _existing_views(conn):
        for prefix in prefixes:
            rest = name[len(prefix) :] if name.startswith(prefix) else None
            if rest is not None and re.fullmatch(rf"{int(parent_id)}(_\d+)?", rest):
                conn.execute(f"DROP VIEW {name}")
                names.append(name)
                break
    return names


def _same_sql(a: str, b: str) -> bool:
    return " ".join(a.split()).upper() == " ".join(b.split()).upper()


def sync_dynamic_views(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """Make the per-id views match the parent rows exactly.

    Creates missing views, recreates views whose definition changed (e.g.
    after a migration), and drops views whose parent row is gone (e.g. after
    a cascading delete). Only names of cisTEM's per-id families are touched.

    Returns
    -------
    (created, dropped)
        View names.
    """
    expected: dict[str, list[str]] = {}
    parents = list(_GROUP_LISTS) + list(_BY_PARENT)
    for parent_table in parents:
        key = _parent_key(parent_table)
        for (parent_id,) in conn.execute(f"SELECT {key} FROM {parent_table}").fetchall():
            expected.update(_expected_views_for(conn, parent_table, int(parent_id)))
    existing = _existing_views(conn)
    created, dropped = [], []
    for name in sorted(existing):
        if _is_dynamic_view(name) and (
            name not in expected or not _same_sql(existing[name], expected[name][0])
        ):
            conn.execute(f"DROP VIEW {name}")
            if name not in expected:
                dropped.append(name)
    existing = _existing_views(conn)
    for name, statements in expected.items():
        if name not in existing:
            for statement in statements:
                conn.execute(statement)
            created.append(name)
    return created, dropped


def adopt_group_tables(conn: sqlite3.Connection) -> list[str]:
    """Move rows of real ``<KIND>_GROUP_<n>`` *tables* into the normalised table.

    cisTEM's ``new_group_from_classes.sh`` creates a group by
    ``INSERT INTO particle_position_group_list ...`` followed by ``CREATE TABLE
    particle_position_group_<n> ...``. Such a table (written behind cistemd's
    back) is adopted: its rows become members of group ``n`` (which must be
    in the group list; otherwise the table is left alone), the table is
    dropped, and the view takes its place.

    Returns
    -------
    list of str
        Names of the tables adopted.
    """
    adopted = []
    tables = [
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    for name in tables:
        upper = name.upper()
        for kind in ASSET_KINDS.values():
            match = re.fullmatch(rf"{kind.view_prefix}(\d+)", upper)
            if match is None:
                continue
            group_id = int(match.group(1))
            listed = conn.execute(
                f"SELECT 1 FROM {kind.group_list} WHERE GROUP_ID = ?", (group_id,)
            ).fetchone()
            if listed is None:
                break
            columns = {c.upper() for c in table_columns(conn, name)}
            member = next(
                (c for c in (kind.view_member_column, kind.asset_id) if c in columns), None
            )
            if member is None:
                break
            order = "MEMBER_NUMBER" if "MEMBER_NUMBER" in columns else "rowid"
            rows = conn.execute(f'SELECT {member} FROM "{name}" ORDER BY {order}').fetchall()
            start = conn.execute(
                f"SELECT COALESCE(MAX(MEMBER_NUMBER), 0) FROM {kind.members_table} "
                "WHERE GROUP_ID = ?",
                (group_id,),
            ).fetchone()[0]
            number = int(start)
            for (asset_id,) in rows:
                exists = conn.execute(
                    f"SELECT 1 FROM {kind.asset_table} WHERE {kind.asset_id} = ?", (asset_id,)
                ).fetchone()
                if exists is None:
                    continue
                number += 1
                conn.execute(
                    f"INSERT OR IGNORE INTO {kind.members_table} "
                    f"(GROUP_ID, MEMBER_NUMBER, {kind.asset_id}) VALUES (?, ?, ?)",
                    (group_id, number, asset_id),
                )
            conn.execute(f'DROP TABLE "{name}"')
            adopted.append(name)
            break
    return adopted


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Column names of a table or view, in order."""
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


# -- migrations -------------------------------------------------------------------------------


class MigrationError(RuntimeError):
    """A migration step failed or left the database inconsistent."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step of the schema.

    Attributes
    ----------
    version
        The schema version after this step (consecutive from 1).
    description
        One line for logs.
    apply
        Function of the open connection; runs inside the step's transaction
        (do not commit). Views of the per-id families are re-synchronised by
        :func:`migrate` afterwards, so a step only changes tables.
    """

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    for name, columns in STATIC_TABLES.items():
        conn.execute(_static_table_ddl(name, columns))
    for kind in ASSET_KINDS.values():
        conn.execute(_members_table_ddl(kind))
    for spec in DYNAMIC_TABLES:
        conn.execute(spec.ddl())


#: ``(index name, table, column)`` added by schema version 2 to cisTEM's tables.
_LOOKUP_INDEXES: tuple[tuple[str, str, str], ...] = (
    ("MOVIE_ASSETS_FILENAME", "MOVIE_ASSETS", "FILENAME"),
    ("IMAGE_ASSETS_FILENAME", "IMAGE_ASSETS", "FILENAME"),
    ("IMAGE_ASSETS_PARENT_MOVIE", "IMAGE_ASSETS", "PARENT_MOVIE_ID"),
    ("VOLUME_ASSETS_FILENAME", "VOLUME_ASSETS", "FILENAME"),
    ("PARTICLE_POSITION_ASSETS_PARENT", "PARTICLE_POSITION_ASSETS", "PARENT_IMAGE_ASSET_ID"),
    ("ESTIMATED_CTF_PARAMETERS_IMAGE", "ESTIMATED_CTF_PARAMETERS", "IMAGE_ASSET_ID"),
    ("MOVIE_ALIGNMENT_LIST_MOVIE", "MOVIE_ALIGNMENT_LIST", "MOVIE_ASSET_ID"),
    ("PARTICLE_PICKING_LIST_IMAGE", "PARTICLE_PICKING_LIST", "PARENT_IMAGE_ASSET_ID"),
    ("REFINEMENT_LIST_PACKAGE", "REFINEMENT_LIST", "REFINEMENT_PACKAGE_ASSET_ID"),
    ("CLASSIFICATION_LIST_PACKAGE", "CLASSIFICATION_LIST", "REFINEMENT_PACKAGE_ASSET_ID"),
    ("STARTUP_LIST_PACKAGE", "STARTUP_LIST", "REFINEMENT_PACKAGE_ASSET_ID"),
    ("MOVIE_ASSETS_METADATA_MOVIE", "MOVIE_ASSETS_METADATA", "MOVIE_ASSET_ID"),
)


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    # Look-ups by file name (duplicate detection on import) and by parent, and
    # an index on every foreign-key child column so that deleting an asset does
    # not scan whole tables. The indexes are *partial* (WHERE col IS NOT NULL):
    # equality look-ups can use them, but an unfiltered scan cannot, so
    # "SELECT PARTICLE_POSITION_ASSET_ID FROM PARTICLE_POSITION_ASSETS" still
    # returns rows in id order -- cisTEM's new_group_from_classes.sh maps stack
    # positions to position ids by exactly that order. (SQLite does not use such
    # an index for a NOT NULL column, so these columns are nullable.)
    for name, table, column in _LOOKUP_INDEXES:
        conn.execute(f"CREATE INDEX {name} ON {table}({column}) WHERE {column} IS NOT NULL")
    # The membership tables are only read through their views.
    for kind in ASSET_KINDS.values():
        conn.execute(
            f"CREATE INDEX {kind.members_table}_ASSET ON {kind.members_table}({kind.asset_id})"
        )


#: The schema's history; append new steps, never edit released ones.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "cisTEM tables, normalised per-id tables", _migrate_to_1),
    Migration(2, "indexes on file names, parents and foreign-key columns", _migrate_to_2),
)

#: The version :func:`migrate` brings a database to.
LATEST_VERSION: int = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA user_version`` of the database (0 for an empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_chain(migrations: Iterable[Migration]) -> list[Migration]:
    chain = list(migrations)
    for expected, step in enumerate(chain, start=1):
        if step.version != expected:
            raise MigrationError(
                f"migration versions must run 1, 2, 3 ...; found {step.version} at position "
                f"{expected}"
            )
    return chain


def migrate(
    conn: sqlite3.Connection,
    *,
    target: int | None = None,
    migrations: Iterable[Migration] = MIGRATIONS,
) -> list[int]:
    """Bring the database forward to ``target`` (default: the latest version).

    The connection must be in autocommit mode (``isolation_level=None``) and
    not inside a transaction. Each step runs in its own ``BEGIN IMMEDIATE``
    transaction with foreign-key enforcement off, followed by a
    ``foreign_key_check``, the per-id view synchronisation and the version
    bump (``PRAGMA user_version`` and ``MASTER_SETTINGS.CURRENT_VERSION``).

    Returns
    -------
    list of int
        The versions applied, in order.

    Raises
    ------
    MigrationError
        If the database is newer than ``target``, or a step fails (that step
        is rolled back; earlier steps stay applied).
    """
    chain = _check_chain(migrations)
    latest = chain[-1].version if chain else 0
    wanted = latest if target is None else int(target)
    if not 0 <= wanted <= latest:
        raise MigrationError(f"target version {wanted} is not between 0 and {latest}")
    current = schema_version(conn)
    if current > wanted:
        raise MigrationError(
            f"the database has schema version {current}, newer than {wanted}; "
            "it was written by a newer cistemd -- upgrade cistemd to open it"
        )
    if conn.in_transaction:
        raise MigrationError("migrate() must not be called inside a transaction")
    applied: list[int] = []
    foreign_keys = int(conn.execute("PRAGMA foreign_keys").fetchone()[0])
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for step in chain[current:wanted]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                step.apply(conn)
                problems = conn.execute("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise MigrationError(
                        f"migration to version {step.version} ({step.description}) leaves "
                        f"{len(problems)} broken foreign keys, e.g. {tuple(problems[0])}"
                    )
                sync_dynamic_views(conn)
                conn.execute(f"PRAGMA user_version = {step.version}")
                conn.execute("UPDATE MASTER_SETTINGS SET CURRENT_VERSION = ?", (step.version,))
                conn.execute("COMMIT")
            except BaseException as exc:
                conn.execute("ROLLBACK")
                if isinstance(exc, MigrationError):
                    raise
                if isinstance(exc, sqlite3.Error):
                    raise MigrationError(
                        f"migration to version {step.version} ({step.description}) failed: {exc}"
                    ) from exc
                raise
            applied.append(step.version)
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    return applied
