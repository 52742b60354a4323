"""seestarpy 0.7.1's CrowdSky client, unchanged, pointed at CrowdSky with set_base_url."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client_run(tmp_path_factory):
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed to keep seestarpy's network discovery off the network")
    workdir = tmp_path_factory.mktemp("seestarpy")
    script = f"ip link set lo up && exec {sys.executable} tests/seestarpy_session.py {workdir}"
    done = subprocess.run(["unshare", "--net", "sh", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wrong_password_is_the_clients_authentication_error(client_run):
    assert client_run["wrong_password"] == "CrowdSky authentication failed (401)."


def test_raw_frames_upload_finalize_and_stack(client_run):
    uploads = client_run["uploads"]
    assert len(uploads) == 6 and all(u["ok"] for u in uploads)
    assert {u["chunk_key"] for u in uploads} == {"20250327.23_HP033810"}
    assert uploads[0]["date_obs"].startswith("2025-03-27T05:45:00")
    assert "400" in client_run["no_date_obs"]
    finalize = client_run["finalize"]
    assert finalize["ok"] and finalize["jobs"] == 1 and finalize["chunks"] == ["20250327.23_HP033810"]
    assert len(finalize["job_ids"]) == 1 and finalize["skipped"] == []
    assert client_run["stacker"] >= 1


def test_list_and_download(client_run):
    stacks = client_run["stacks"]
    assert len(stacks) == 1
    assert stacks[0]["chunk_key"] == "20250327.23_HP033810" and stacks[0]["object_name"] == "M 94"
    assert stacks[0]["n_frames"] >= 2
    assert len(client_run["stacks_m94"]) == 1 and client_run["stacks_m31"] == []
    download = client_run["download"]
    assert download["name"].endswith(".fits") and download["ncombine"] == stacks[0]["n_frames"]
    assert download["sitelat"] is False


def test_a_chunk_that_already_has_a_stack_is_skipped(client_run):
    again = client_run["finalize_again"]
    assert again["ok"] and again["jobs"] == 0 and again["skipped"] == [client_run["first_key"]]


def test_upload_stack_made_elsewhere(client_run):
    queued = client_run["upload_stack"]
    assert queued["ok"] and queued["status"] == "queued" and queued["chunk_key"] == "20250409.83_HP033810"
    assert isinstance(queued["job_id"], int)
    assert client_run["stacker_import"] >= 1
    imported = [s for s in client_run["stacks_after_import"] if s["chunk_key"] == "20250409.83_HP033810"]
    assert len(imported) == 1 and imported[0]["n_frames"] == 4 and imported[0]["n_frames_rejected"] == 1
