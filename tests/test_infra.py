"""Deployment files: the compose file validates, and the systemd units start the three roles."""
import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_compose_file_validates():
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is missing: apt-get install -y docker-compose (infra/test-tools.sh does it)")
    done = subprocess.run(["docker-compose", "-f", str(INFRA / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for service in ("minio", "postgres", "ingest", "stacker", "janitor"):
        assert f"  {service}:" in done.stdout, f"compose has no {service} service"


@pytest.mark.parametrize("unit, command", [("crowdsky-ingest.service", "ingest_app.py"),
                                           ("crowdsky-stacker.service", "stacker.py --loop"),
                                           ("crowdsky-janitor.service", "janitor.py")])
def test_systemd_units_run_the_roles_with_the_env_file(unit, command):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(INFRA / "systemd" / unit)
    service = parser["Service"]
    assert command in service["ExecStart"]
    assert service["EnvironmentFile"].endswith("crowdsky.env")
