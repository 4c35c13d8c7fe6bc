# shellcheck shell=bash disable=SC2034,SC2154
# (SC2034: the paths are used by the scripts that source this; SC2154: they set dry_run.)
# Shared by install.sh and uninstall.sh (sourced, not run): the target's paths and the helpers
# that print each step and honour --root (a staging tree) and --dry-run.
# The caller sets: root (may be empty), dry_run (0|1), and defines die().

# Check --root (absolute, not "/") or that we run as root on the live system.
check_root() {
	if [[ -n "$root" ]]; then
		[[ "$root" == /* ]] || root="$PWD/$root"
		root="${root%/}"
		[[ -n "$root" ]] || die "--root / is the live system: leave --root out instead"
	elif [[ "$(id -u)" != 0 ]]; then
		die "must run as root (sudo $0 ...), or stage with --root DIR"
	fi
	# Paths on the target (under the staging root when --root is given).
	OPT="$root/opt/edge-agent"
	ETC="$root/etc/edge-agent"
	STATE="$root/var/lib/edge-agent"
	UNIT_DIR="$root/etc/systemd/system"
	BIN_LINK="$root/usr/local/bin/edge-agent"
	readonly OPT ETC STATE UNIT_DIR BIN_LINK
}

say() { echo "==> $*"; }

# A step that changes the target (under --root too): printed, then done unless --dry-run.
run() {
	printf '+'
	printf ' %q' "$@"
	echo
	((dry_run)) || "$@"
}

# A step on the live system only (packages, users, ownership, systemd): printed; skipped under
# --root and --dry-run.
system() {
	if [[ -n "$root" ]]; then
		printf '+'
		printf ' %q' "$@"
		echo " # skipped: --root"
	else
		run "$@"
	fi
}
