"""The systemd units in deploy/systemd: systemd's own checker accepts them, they start the
services that exist, and the example environment file holds only settings caduceus knows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caduceus.core.service_names import SERVICES
from caduceus.core.settings import Settings

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
INSTALLED = "/opt/caduceus/bin/caduceus"


def analyze(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (CI has it)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point the copies at this virtualenv's
    # caduceus instead of the installed path, which does not exist here.
    program = Path(sys.prefix) / "bin" / "caduceus"
    assert program.exists()
    shutil.copytree(UNITS, tmp_path, dirs_exist_ok=True)
    for unit in tmp_path.glob("*.service"):
        unit.write_text(unit.read_text().replace(INSTALLED, str(program)))
    names = ["caduceus.service", "caduceus.target"]
    names += [f"caduceus@{service}.service" for service in SERVICES]
    result = analyze(tmp_path, "verify", *(f"./{name}" for name in names))
    # verify exits 0 on mere warnings (an unknown key is ignored): any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_target_starts_every_service_and_only_those() -> None:
    wanted = re.findall(r"caduceus@(\w+)\.service", (UNITS / "caduceus.target").read_text())
    assert sorted(wanted) == sorted(SERVICES)
    assert "ExecStart=/opt/caduceus/bin/caduceus %i" in (UNITS / "caduceus@.service").read_text()


def test_processor_keeps_what_bubblewrap_needs(tmp_path: Path) -> None:
    """The template's strict options would break the local runner's sandbox; the processor's
    drop-in lifts them, and systemd reads it."""
    shutil.copytree(UNITS, tmp_path, dirs_exist_ok=True)
    report = analyze(tmp_path, "security", "--offline=true", "./caduceus@processor.service")
    strict = analyze(tmp_path, "security", "--offline=true", "./caduceus@web.service")
    assert "✗ ProtectKernelTunables=" in report.stdout, report
    assert "✗ RestrictNamespaces=~user" in report.stdout, report
    assert "✓ ProtectKernelTunables=" in strict.stdout, strict


def test_example_environment_file_names_real_settings() -> None:
    lines = (UNITS / "caduceus.env").read_text().splitlines()
    assignments = [line.lstrip("# ") for line in lines if re.match(r"#? ?CADUCEUS_\w+=", line)]
    fields = {f"CADUCEUS_{name.upper()}" for name in Settings.model_fields}
    assert assignments and {a.split("=", 1)[0] for a in assignments} <= fields
    active = dict(a.split("=", 1) for a in (line for line in lines if line.startswith("CADUCEUS")))
    Settings.model_validate({k.removeprefix("CADUCEUS_").lower(): v for k, v in active.items()})


def test_the_rootless_podman_drop_in_of_the_docs_is_valid(tmp_path: Path) -> None:
    """docs/install.md gives a drop-in that shows the rootless Podman socket to the processor
    through ProtectHome=yes; systemd's checker accepts it, and the unit then reaches it."""
    docs = (UNITS.parent.parent / "docs" / "install.md").read_text()
    snippet = re.search(r"<!-- rootless-podman drop-in -->\s*```ini\n(.*?)```", docs, re.DOTALL)
    assert snippet is not None
    drop_in = "\n".join(line.strip() for line in snippet.group(1).splitlines())
    assert "ProtectHome=tmpfs" in drop_in and "BindPaths=/run/user/UID/podman" in drop_in
    program = Path(sys.prefix) / "bin" / "caduceus"
    shutil.copytree(UNITS, tmp_path, dirs_exist_ok=True)
    unit = tmp_path / "caduceus@.service"
    unit.write_text(unit.read_text().replace(INSTALLED, str(program)))
    (tmp_path / "caduceus@processor.service.d" / "podman.conf").write_text(
        drop_in.replace("UID", "10001")
    )
    result = analyze(tmp_path, "verify", "./caduceus@processor.service")
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    report = analyze(tmp_path, "security", "--offline=true", "./caduceus@processor.service")
    # systemd read the drop-in: homes (and /run/user) are now empty stand-ins, not absent.
    assert "fake empty home directories" in report.stdout, report.stdout
