"""Run profiles: the model's new fields, the store in $CISTEM_HOME, cisTEM's text format,
the shipped templates, and profile CRUD through a real daemon."""

from __future__ import annotations

import json
import stat

import pytest
from daemon_fixtures import daemon, home  # noqa: F401

from cistemd.client import DaemonRequestError
from cistemd.errors import InvalidInputError
from cistemd.manager.profile_store import (
    ProfileStore,
    format_cistem_profiles,
    parse_cistem_profiles,
    shipped_templates,
)
from cistemd.manager.profiles import (
    DEFAULT_LOCAL_PROFILE_NAME,
    ProfileCommand,
    RunProfile,
    SchedulerSettings,
    SshSettings,
    render_template,
)

CISTEM_TEXT = """number_of_profiles=2
profile_0_name="Default Local"
profile_0_manager_command="/opt/cistem/$command"
profile_0_gui_address=""
profile_0_controller_address=""
profile_0_number_of_run_commands=1
profile_0_command_0_command_to_run="/opt/cistem/$command"
profile_0_command_0_number_of_copies=9
profile_0_command_0_number_of_threads_per_copy=1
profile_0_command_0_should_override_total_number_of_copies=0
profile_0_command_0_overriden_total_number_of_copies=9
profile_0_command_0_delay_time_in_ms=10
profile_1_name="Lab workstations"
profile_1_manager_command="$command"
profile_1_gui_address="10.0.0.1"
profile_1_controller_address=""
profile_1_number_of_run_commands=2
profile_1_command_0_command_to_run="ssh node07 $command"
profile_1_command_0_number_of_copies=4
profile_1_command_0_number_of_threads_per_copy=2
profile_1_command_0_should_override_total_number_of_copies=0
profile_1_command_0_overriden_total_number_of_copies=4
profile_1_command_0_delay_time_in_ms=100
profile_1_command_1_command_to_run="ssh -p 2222 alice@node08 $command"
profile_1_command_1_number_of_copies=2
profile_1_command_1_number_of_threads_per_copy=1
profile_1_command_1_should_override_total_number_of_copies=0
profile_1_command_1_overriden_total_number_of_copies=2
profile_1_command_1_delay_time_in_ms=10
"""


def ssh_profile() -> RunProfile:
    return RunProfile(
        name="cluster",
        launcher="ssh",
        gui_address="10.0.0.1:5555",
        commands=(
            ProfileCommand(host="node07", number_of_copies=2),
            ProfileCommand(host="bob@node08:2222", number_of_copies=3, threads_per_copy=4),
        ),
        ssh=SshSettings(known_hosts="/etc/ssh/ssh_known_hosts", keepalive_s=2.0),
    )


def test_profile_round_trips_with_every_new_field():
    profile = ssh_profile()
    data = json.loads(json.dumps(profile.to_dict()))
    assert RunProfile.from_dict(data) == profile
    assert data["launcher"] == "ssh" and data["commands"][1]["host"] == "bob@node08:2222"
    assert profile.remote and profile.total_copies == 5
    slurm = RunProfile(
        name="slurm",
        launcher="scheduler",
        commands=(ProfileCommand(number_of_copies=4),),
        scheduler=SchedulerSettings(
            kind="slurm", queue="debug", walltime="01:00:00", extra_directives=("--gres=gpu:1",)
        ),
    )
    assert RunProfile.from_dict(json.loads(json.dumps(slurm.to_dict()))) == slurm


def test_old_profile_maps_still_load():
    old = {"name": "x", "commands": [{"command_to_run": "$command", "number_of_copies": 2}]}
    profile = RunProfile.from_dict(old)
    assert profile.launcher == "local" and not profile.remote


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x", "launcher": "teleport", "commands": [{}]},
        {"name": "x", "launcher": "ssh", "commands": [{}]},  # no host
        {"name": "x", "commands": [{"host": "bad host;rm -rf /"}]},
        {"name": "x", "commands": [{}], "scheduler": {"kind": "condor"}},
        {"name": "x", "commands": [{}], "scheduler": {"kind": "sge", "mode": "allocation"}},
        {"name": "x", "commands": [{}], "scheduler": {"queue": "a b"}},
        {"name": "x", "commands": [{}], "scheduler": {"prologue": ["a\nb"]}},
        {"name": "x", "commands": [{}], "ssh": {"port": 0}},
        {"name": "x", "commands": [{}], "ssh": {"colour": "red"}},
        {"name": "../etc", "commands": [{}]},
    ],
)
def test_bad_new_fields_are_refused(bad):
    with pytest.raises(InvalidInputError):
        RunProfile.from_dict(bad)


def test_program_name_is_substituted():
    line = render_template("nice $program_name: $command", ["python", "-m", "x y"])
    assert line == "nice cistemd.worker: python -m 'x y'"


def test_cistem_text_is_parsed_and_ssh_commands_become_an_ssh_profile():
    local, cluster = parse_cistem_profiles(CISTEM_TEXT)
    assert local.name == "Default Local" and local.launcher == "local"
    # cisTEM's binaries' directory is dropped: cistemd's $command is a whole command line
    assert local.commands[0].command_to_run == "$command" and local.manager_command == "$command"
    assert local.commands[0].number_of_copies == 9
    assert cluster.launcher == "ssh" and cluster.gui_address == "10.0.0.1"
    assert [c.host for c in cluster.commands] == ["node07", "alice@node08:2222"]
    assert [c.threads_per_copy for c in cluster.commands] == [2, 1]
    assert cluster.commands[0].delay_ms == 100
    # export and parse again: the same profiles
    again = parse_cistem_profiles(format_cistem_profiles([local, cluster]))
    assert again == [local, cluster]
    assert 'command_to_run="ssh -p 2222 alice@node08 $command"' in format_cistem_profiles(
        [cluster]
    )


@pytest.mark.parametrize(
    "text",
    ["", "number_of_profiles=1\n", "number_of_profiles=x\n", "garbage\n",
     "number_of_profiles=1\nprofile_0_name=\"a\"\n"],
)  # fmt: skip
def test_malformed_cistem_text_is_refused(text):
    with pytest.raises(InvalidInputError):
        parse_cistem_profiles(text)


def test_store_saves_0600_files_lists_and_deletes(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    assert store.names() == [DEFAULT_LOCAL_PROFILE_NAME]
    path = store.save(ssh_profile())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.get("cluster") == ssh_profile()
    assert [p.name for p in store.all()] == [DEFAULT_LOCAL_PROFILE_NAME, "cluster"]
    store.delete("cluster")
    with pytest.raises(InvalidInputError):
        store.get("cluster")
    with pytest.raises(InvalidInputError):
        store.delete(DEFAULT_LOCAL_PROFILE_NAME)
    assert store.import_text(CISTEM_TEXT) == ["Default Local", "Lab workstations"]
    assert store.get(DEFAULT_LOCAL_PROFILE_NAME).commands[0].number_of_copies == 9
    assert "Lab workstations" in store.export_text()


def test_shipped_templates_load():
    templates = shipped_templates()
    expected = {"local", "ssh-cluster", "slurm-sbatch", "slurm-srun", "slurm-salloc", "sge",
                "lsf", "pbs"}  # fmt: skip
    assert expected <= set(templates)
    assert templates["slurm-salloc"].scheduler.mode == "allocation"
    assert templates["ssh-cluster"].launcher == "ssh"


def test_profile_crud_through_the_daemon(daemon):  # noqa: F811
    with daemon.client() as client:
        names = [p["name"] for p in client.profiles()]
        assert names == [DEFAULT_LOCAL_PROFILE_NAME]
        client.save_profile(ssh_profile().to_dict())
        listed = {p["name"]: p for p in client.profiles()}
        assert RunProfile.from_dict(listed["cluster"]) == ssh_profile()
        with pytest.raises(DaemonRequestError) as caught:
            client.save_profile({"name": "bad", "launcher": "ssh", "commands": [{}]})
        assert caught.value.code == "invalid_input" and "host" in caught.value.reason
        assert client.import_profiles(CISTEM_TEXT) == ["Default Local", "Lab workstations"]
        text = client.export_profiles(["Lab workstations"])
        assert parse_cistem_profiles(text)[0].name == "Lab workstations"
        assert "number_of_profiles=3" in client.export_profiles()
        client.delete_profile("cluster")
        assert "cluster" not in [p["name"] for p in client.profiles()]
        with pytest.raises(DaemonRequestError):
            client.delete_profile("cluster")


def test_worker_address_is_chosen_per_profile():
    from cistemd.manager.launchers import resolve_worker_address

    assert resolve_worker_address("lo") == ("127.0.0.1", 0)
    assert resolve_worker_address("interface:lo") == ("127.0.0.1", 0)
    assert resolve_worker_address("127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert resolve_worker_address("", "alice@127.0.0.1:2222") == ("127.0.0.1", 0)
    assert resolve_worker_address("localhost")[0] == "127.0.0.1"
    with pytest.raises(InvalidInputError):
        resolve_worker_address("interface:nosuchif0")
    with pytest.raises(InvalidInputError):
        resolve_worker_address("127.0.0.1:99999")


def test_an_imported_default_local_is_the_one_jobs_use(tmp_path):
    from cistemd.manager.daemon import resolve_profile
    from cistemd.manager.home import CistemHome

    where = CistemHome.at(tmp_path / "home")
    assert resolve_profile("", where).name == DEFAULT_LOCAL_PROFILE_NAME
    ProfileStore(where.root / "profiles").import_text(CISTEM_TEXT)
    for name in ("", "local", DEFAULT_LOCAL_PROFILE_NAME):
        assert resolve_profile(name, where).commands[0].number_of_copies == 9
    assert resolve_profile("Lab workstations", where).launcher == "ssh"
    assert resolve_profile("local:3", where).total_copies == 3
