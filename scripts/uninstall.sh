#!/usr/bin/env bash
# Remove the edgeflow service installed by install.sh.
#
#   sudo scripts/uninstall.sh           # stop, disable, remove the unit and the venv
#   sudo scripts/uninstall.sh --purge   # also delete /var/lib/edgeflow (UNDELIVERED BUFFERED DATA),
#                                       # /etc/edgeflow (the topology, secrets) and the user edgeflow
#   scripts/uninstall.sh --dry-run      # print the plan, change nothing
#
# Environment: PREFIX (default /opt/edgeflow), as given to install.sh.
set -euo pipefail

PREFIX=${PREFIX:-/opt/edgeflow}
SERVICE_USER=edgeflow
DATA_DIR=/var/lib/edgeflow
CONF_DIR=/etc/edgeflow
UNIT=/etc/systemd/system/edgeflow.service
SYSTEMD_RUN_DIR=${SYSTEMD_RUN_DIR:-/run/systemd/system}
DRY_RUN=0
PURGE=0

usage() { sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'uninstall.sh: %s\n' "$*" >&2; exit 1; }
run() {
    if ((DRY_RUN)); then
        printf '    +'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# PREFIX feeds rm -rf: refuse anything but an absolute path below /.
case $PREFIX in
    /*[!/]*) ;;
    *) die "PREFIX must be an absolute path other than /, not '$PREFIX'" ;;
esac
if ((!DRY_RUN)) && ((EUID != 0)); then
    die "run as root (sudo $0), or with --dry-run to see the plan"
fi
((DRY_RUN)) && step "dry run: nothing will be changed"

step "stop and disable edgeflow"
if [[ -d $SYSTEMD_RUN_DIR ]]; then
    # Already stopped or never enabled is fine: the point is that it is not running afterwards.
    run systemctl disable --now edgeflow || note "(was not enabled)"
else
    note "systemd is not running here: nothing to stop"
fi

step "remove $UNIT"
run rm -f "$UNIT"
if [[ -d $SYSTEMD_RUN_DIR ]]; then
    run systemctl daemon-reload
    run systemctl reset-failed edgeflow 2>/dev/null || true
fi

step "remove the virtualenv $PREFIX/venv"
run rm -rf "$PREFIX/venv"
if [[ -d $PREFIX ]]; then
    run rmdir --ignore-fail-on-non-empty "$PREFIX"
fi

if ((PURGE)); then
    step "purge: delete $DATA_DIR (buffered messages not yet delivered are lost), $CONF_DIR, user $SERVICE_USER"
    run rm -rf "$DATA_DIR" "$CONF_DIR"
    if getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    fi
    # useradd --user-group made a group of the same name; userdel removes it on Debian, not everywhere.
    if getent group "$SERVICE_USER" >/dev/null && ((!DRY_RUN)); then
        groupdel "$SERVICE_USER" || true
    fi
else
    step "kept $DATA_DIR (the store: buffered messages) and $CONF_DIR (the topology); --purge deletes them"
fi
step "done"
