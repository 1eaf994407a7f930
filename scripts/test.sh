#!/usr/bin/env bash
# Installs what the tests need (Debian packages when run as root, a virtualenv with pinned
# Python packages) and runs the checks and the full test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(dcmtk orthanc orthanc-dicomweb openssh-server openssh-client rsync podman runc busybox-static bubblewrap chromium docker-compose)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing Debian packages (tests that need them will be skipped): ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
# Parallel workers (pytest-xdist); each takes its ports from a range of its own.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/pytest -n "${CADUCEUS_TEST_WORKERS:-2}" --dist worksteal "$@"
