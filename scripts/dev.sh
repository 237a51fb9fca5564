#!/usr/bin/env bash
# The two commands of the README:
#   scripts/dev.sh demo   set up a virtual environment and run config/demo.toml (no broker, no root)
#   scripts/dev.sh test   set up (system packages too) and run ruff, mypy and the whole test suite
# Idempotent: a second run reuses the environment and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGEFLOW_VENV:-.venv}
PY=${PYTHON:-python3}

need_python() {
    if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "edgeflow needs Python 3.11 or newer; found: $("$PY" --version 2>&1 || echo none)" >&2
        exit 2
    fi
}

setup_venv() {  # $1: the pip extras to install ("" or "[test]")
    need_python
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --upgrade pip
    fi
    # --no-build-isolation would be faster but needs setuptools in the venv; keep the standard path.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".$1"
}

system_packages() {
    # Real servers for the tests: mosquitto (MQTT), socat (serial pty pairs), openssl (test certs),
    # systemd-analyze (unit checks). Installed only where missing; needs root or sudo.
    local missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
    command -v socat >/dev/null || missing+=(socat)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null; then
        echo "warning: cannot install ${missing[*]} (no apt-get); the tests that need them will be skipped" >&2
        return 0
    fi
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-}" in
    demo)
        setup_venv ""
        shift
        exec "$VENV/bin/edgeflow" run config/demo.toml "$@"
        ;;
    test)
        setup_venv "[test]"
        system_packages
        shift
        echo "== ruff"
        "$VENV/bin/ruff" check edgeflow actors tests scripts
        "$VENV/bin/ruff" format --check edgeflow actors tests scripts
        echo "== mypy"
        "$VENV/bin/mypy"
        echo "== pytest"
        exec "$VENV/bin/pytest" "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh demo | test [pytest args]" >&2
        exit 2
        ;;
esac
