#!/usr/bin/env bash
# Remove edge-agent from a device. See docs/deploy.md.
#
#   sudo uninstall.sh [--purge [--force]] [--root DIR] [--dry-run]
#
# Stops and disables the service, removes the unit, its drop-ins, the venv (/opt/edge-agent) and
# the /usr/local/bin/edge-agent link. Keeps /etc/edge-agent (config, keys), /var/lib/edge-agent
# (the spool) and the edge-agent user unless --purge.
#
#   --purge    also delete /etc/edge-agent, /var/lib/edge-agent and the user. Refused while the
#              spool holds segments: they are evidence the platform has not acknowledged yet.
#   --force    with --purge: delete the spool even so (the evidence in it is lost)
#   --root DIR act on a staged tree under DIR (tests): no systemctl or userdel, printed instead
#   --dry-run  print every step, change nothing
set -euo pipefail

readonly USER_NAME=edge-agent
purge=0
force=0
root=""
dry_run=0

die() { echo "uninstall.sh: $*" >&2; exit 1; }
# shellcheck source=deploy/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

while (($#)); do
	case "$1" in
	--purge) purge=1 ;;
	--force) force=1 ;;
	--root) root="${2:?--root needs a directory}"; shift ;;
	--root=*) root="${1#*=}" ;;
	--dry-run) dry_run=1 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
((force && !purge)) && die "--force only means something with --purge"

check_root

# Sealed segments still in the spool (not yet acknowledged by the platform), and anything the
# agent set aside in quarantine (never deleted by the agent itself).
pending_evidence() {
	local n=0 d
	for d in "$STATE/spool/seg" "$STATE/spool/quarantine"; do
		[[ -d "$d" ]] && n=$((n + $(find "$d" -type f | wc -l)))
	done
	echo "$n"
}

refuse_purge() {
	cat >&2 <<EOF
uninstall.sh: refusing --purge: the spool holds $1 file(s) of evidence the platform has not
acknowledged yet ($STATE/spool). Deleting them loses that evidence for good.
  - let the agent deliver them (edge-agent spool shows the backlog), or
  - copy them off first: cp -a $STATE/spool /some/safe/place
  - or rerun with --purge --force to delete them anyway.
Nothing has been changed.
EOF
	exit 2
}

if ((purge && !force)); then
	n="$(pending_evidence)"
	((n == 0)) || refuse_purge "$n"
fi

say "stopping and disabling edge-agent"
# The agent seals what it holds on SIGTERM (up to TimeoutStopSec); errors mean "not installed".
system systemctl disable --now edge-agent.service || true

say "removing the unit, the venv and the command link"
run rm -f "$UNIT_DIR/edge-agent.service"
run rm -rf "$UNIT_DIR/edge-agent.service.d"
# The polkit rules install.sh wrote (power-off on a critical battery; the modem's signal set-up).
run rm -f "$root/etc/polkit-1/rules.d/50-edge-agent-power-off.rules" \
	"$root/etc/polkit-1/rules.d/51-edge-agent-modem.rules"
system systemctl daemon-reload
system systemctl reset-failed edge-agent.service || true
run rm -rf "$OPT"
if [[ -L "$BIN_LINK" && "$(readlink "$BIN_LINK")" == /opt/edge-agent/* ]]; then
	run rm -f "$BIN_LINK"
fi

if ((purge)); then
	# Stopping may have sealed what the agent held: look again.
	n="$(pending_evidence)"
	if ((n > 0 && !force)); then
		echo "uninstall.sh: the agent sealed $n file(s) while stopping: not purging." >&2
		echo "    Kept $ETC (the device key that signed them), $STATE and the user." >&2
		echo "    Deliver or copy them, then rerun with --purge (or --purge --force)." >&2
		exit 2
	fi
	((n == 0)) || echo "uninstall.sh: --force: deleting $n file(s) of undelivered evidence" >&2
	say "purging $STATE (spool), $ETC (config and device keys) and the $USER_NAME user"
	run rm -rf "$STATE" "$ETC" "$root/run/edge-agent"
	if [[ -n "$root" ]] || getent passwd "$USER_NAME" >/dev/null; then
		system userdel "$USER_NAME"
	fi
else
	say "kept: $ETC (config, keys), $STATE (spool) and the $USER_NAME user"
	n="$(pending_evidence)"
	((n == 0)) || echo "    the spool still holds $n file(s) of undelivered evidence"
	echo "    delete them with: $0 --purge"
fi
say "edge-agent removed"
