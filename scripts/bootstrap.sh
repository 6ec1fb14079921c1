# Sourced by scripts/demo and scripts/test: make .venv and install the gateway.
# Works on a fresh Debian machine with Python 3.11; uses sudo when not root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # Debian ships venv separately (python3-venv); install it if venv fails.
  if ! "$python" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    echo "installing python3-venv" >&2
    apt_install python3-venv
    "$python" -m venv .venv
  fi
fi
echo "installing the gateway into .venv" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${GATEWAY_EXTRAS:-}"
