#!/usr/bin/env bash
# Install (or upgrade) edgeflow as a systemd service on a Debian-like gateway, from this checkout.
#
#   sudo scripts/install.sh             # install, or upgrade in place; safe to run again
#   scripts/install.sh --dry-run        # print the plan, change nothing (no root needed)
#
# Environment: PREFIX (default /opt/edgeflow; the venv goes in $PREFIX/venv), EXTRAS (pip extras of
# the package, e.g. "http"), PYTHON (default /usr/bin/python3, must be >= 3.11, outside /root and /home).
# Never overwrites /etc/edgeflow/topology.toml; never touches /var/lib/edgeflow beyond creating it.
set -euo pipefail

PREFIX=${PREFIX:-/opt/edgeflow}
EXTRAS=${EXTRAS:-}
PYTHON=${PYTHON:-/usr/bin/python3}
SERVICE_USER=edgeflow
DATA_DIR=/var/lib/edgeflow
CONF_DIR=/etc/edgeflow
UNIT_DIR=/etc/systemd/system
# Where a running systemd leaves its mark; overridable so that tests can plan both cases.
SYSTEMD_RUN_DIR=${SYSTEMD_RUN_DIR:-/run/systemd/system}

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$PREFIX/venv
DRY_RUN=0

usage() { sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Run a command, or only show it under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '    +'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

case $PREFIX in
    /?*) ;;
    *) die "PREFIX must be an absolute path, not '$PREFIX'" ;;
esac
[[ -f $REPO_DIR/pyproject.toml ]] || die "no pyproject.toml in $REPO_DIR: run this script from an edgeflow checkout"
[[ -f $REPO_DIR/systemd/edgeflow.service ]] || die "missing $REPO_DIR/systemd/edgeflow.service"
[[ -f $REPO_DIR/config/gateway.sample.toml ]] || die "missing $REPO_DIR/config/gateway.sample.toml"
if ((!DRY_RUN)) && ((EUID != 0)); then
    die "run as root (sudo $0), or with --dry-run to see the plan"
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "edgeflow needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "the venv module is missing: apt-get install python3-venv"
# ProtectHome=yes hides /root and /home from the service: a venv built on an interpreter there (pyenv,
# a user's own build) cannot even be executed by it (status=203/EXEC).
python_home=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case $python_home in
    /root | /root/* | /home/* | /run/user/*)
        die "$PYTHON lives in $python_home, hidden from the service (ProtectHome=yes): use the system python3, e.g. PYTHON=/usr/bin/python3" ;;
esac

((DRY_RUN)) && step "dry run: nothing will be changed"

step "[1/7] system user $SERVICE_USER (home $DATA_DIR, no login shell, group dialout for serial ports)"
if ! getent group dialout >/dev/null; then
    run groupadd --system dialout
fi
if getent passwd "$SERVICE_USER" >/dev/null; then
    note "user $SERVICE_USER exists; making sure it is in group dialout"
    run usermod --append --groups dialout "$SERVICE_USER"
else
    run useradd --system --user-group --groups dialout --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "edgeflow runtime" "$SERVICE_USER"
fi

step "[2/7] directories: $DATA_DIR (state, owned by $SERVICE_USER), $CONF_DIR (config, root:$SERVICE_USER)"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"

step "[3/7] virtualenv $VENV (python3 -m venv)"
venv_home=$("$VENV/bin/python" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))' 2>/dev/null || true)
if [[ $venv_home == "$python_home" ]]; then
    note "$VENV exists; upgrading the package in it"
elif [[ -e $VENV ]]; then
    # Broken (the system Python was upgraded) or built on another interpreter: rebuild it.
    note "$VENV is built on '${venv_home:-a missing interpreter}', not $python_home: recreating it"
    run "$PYTHON" -m venv --clear "$VENV"
else
    run install -d -m 0755 "$PREFIX"
    run "$PYTHON" -m venv "$VENV"
fi

step "[4/7] pip install edgeflow from $REPO_DIR (a regular install, not editable)"
# Built from a clean copy: setuptools would otherwise leave build/ in the checkout, and stale modules
# in build/lib end up in the next wheel. --no-cache-dir: nothing left behind in root's home. The venv
# stays root-owned, so read-only to the service.
if ((DRY_RUN)); then
    src=$REPO_DIR
else
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    tar -C "$REPO_DIR" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./data \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' --exclude=./.hypothesis -cf - . \
        | tar -C "$src" -xf -
fi
spec=$src
[[ -n $EXTRAS ]] && spec="${src}[$EXTRAS]"
run "$VENV/bin/pip" install --disable-pip-version-check --no-cache-dir --upgrade "$spec"

step "[5/7] topology $CONF_DIR/topology.toml"
if [[ -e $CONF_DIR/topology.toml ]]; then
    note "$CONF_DIR/topology.toml exists: kept as it is (the sample is $REPO_DIR/config/gateway.sample.toml)"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$REPO_DIR/config/gateway.sample.toml" "$CONF_DIR/topology.toml"
fi

step "[6/7] unit $UNIT_DIR/edgeflow.service"
# The unit names /opt/edgeflow; point it at $PREFIX.
if ((DRY_RUN)); then
    note "+ sed 's#/opt/edgeflow/#$PREFIX/#g' $REPO_DIR/systemd/edgeflow.service > $UNIT_DIR/edgeflow.service"
else
    tmp=$(mktemp)
    sed "s#/opt/edgeflow/#$PREFIX/#g" "$REPO_DIR/systemd/edgeflow.service" >"$tmp"
    install -m 0644 "$tmp" "$UNIT_DIR/edgeflow.service"
    rm -f "$tmp"
fi

step "[7/7] systemd: daemon-reload, enable --now edgeflow"
if [[ -d $SYSTEMD_RUN_DIR ]]; then
    was_active=0
    systemctl is-active --quiet edgeflow 2>/dev/null && was_active=1
    run systemctl daemon-reload
    if ! run systemctl enable --now edgeflow; then
        die "edgeflow did not start; see: journalctl -u edgeflow -b --no-pager | tail -50"
    fi
    if ((was_active)); then
        note "edgeflow was running: restarting it on the new version"
        run systemctl restart edgeflow
    fi
    ((DRY_RUN)) || note "running. Logs: journalctl -u edgeflow -f   Status: systemctl status edgeflow"
else
    note "systemd is not running here (a container?): skipped daemon-reload, enable and start."
    note "run it in the foreground with: $VENV/bin/edgeflow run $CONF_DIR/topology.toml"
fi
step "done"
