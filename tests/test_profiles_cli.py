"""``cistem profile``: list, add from a template, edit, show, script, export, import, delete."""

from __future__ import annotations

import json
import stat

import pytest
from test_profiles import CISTEM_TEXT

from cistemd.cli.main import main
from cistemd.manager.profile_store import parse_cistem_profiles


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CISTEM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["profile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_add_from_a_template_edit_and_print_the_exact_script(capsys, home):
    code, out, _ = cli(capsys, "add", "gpu", "--template", "slurm-sbatch", "--queue", "gpu",
                       "--directive=--gres=gpu:1", "--prologue", "module load cuda",
                       "--copies", "2", "--gui-address", "127.0.0.1")  # fmt: skip
    assert code == 0 and "gpu: scheduler, 2 worker(s)" in out
    assert stat.S_IMODE((home / "profiles" / "gpu.json").stat().st_mode) == 0o600
    code, out, _ = cli(capsys, "script", "gpu", "--worker-id", "w9-feed")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "#SBATCH --partition=gpu" in lines and "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH --job-name=cistem-worker-w9-feed" in lines
    assert lines[lines.index("module load cuda") + 1].endswith(
        f"--credentials-file {home / 'credentials' / 'job-1.json'}"
    )
    assert "secret" not in out
    code, out, _ = cli(capsys, "edit", "gpu", "--walltime", "00:30:00", "--json")
    assert json.loads(out)["scheduler"]["walltime"] == "00:30:00"
    assert json.loads(out)["scheduler"]["queue"] == "gpu"  # kept


def test_list_show_export_import_delete(capsys, home, tmp_path):
    assert cli(capsys, "add", "ws", "--host", "node1", "--host", "bob@node2:2222")[0] == 0
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "node1×2, bob@node2:2222×2" in out and "Default Local" in out
    code, out, _ = cli(capsys, "list", "--json")
    assert [p["name"] for p in json.loads(out)["profiles"]] == ["Default Local", "ws"]
    code, out, _ = cli(capsys, "export", "ws")
    assert parse_cistem_profiles(out)[0].commands[1].host == "bob@node2:2222"
    text = tmp_path / "default_run_profiles.txt"
    text.write_text(CISTEM_TEXT)
    code, out, _ = cli(capsys, "import", str(text), "--json")
    assert json.loads(out) == {"imported": ["Default Local", "Lab workstations"]}
    code, out, _ = cli(capsys, "script", "Lab workstations")
    assert "ssh node07: exec" in out and "--connect tcp://10.0.0.1:" in out.replace("'", "")
    assert cli(capsys, "delete", "ws")[0] == 0
    code, _, err = cli(capsys, "show", "ws")
    assert code == 2 and "no run profile 'ws'" in err


def test_bad_input_exits_2_naming_the_field(capsys):
    code, _, err = cli(capsys, "add", "x", "--launcher", "ssh")
    assert code == 2 and "host" in err
    code, _, err = cli(capsys, "add", "x", "--template", "condor")
    assert code == 2 and "slurm-sbatch" in err
    assert cli(capsys, "add", "y")[0] == 0
    code, _, err = cli(capsys, "add", "y")
    assert code == 2 and "exists" in err
