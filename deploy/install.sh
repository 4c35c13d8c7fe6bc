#!/usr/bin/env bash
# Install or upgrade edge-agent on a Raspberry Pi OS / Debian bookworm device. See docs/deploy.md.
#
#   sudo deploy/install.sh --profile bodycam|dashcam|tracker [options]
#
# Options:
#   --profile P        bodycam and dashcam install edge-agent[all] (OpenCV, PyAV, sounddevice);
#                      tracker installs edge-agent[gps] only (no OpenCV, no numpy). Required the
#                      first time; an upgrade reuses the profile recorded in /opt/edge-agent.
#   --source PATH      the package: a source tree (default: this script's repository) or a wheel
#   --wheelhouse DIR   install offline from the wheels in DIR (pip --no-index --find-links DIR)
#   --pip-arg ARG      pass ARG to pip install (repeatable), e.g. --pip-arg=--no-deps
#   --python PY        the interpreter for the venv (default /usr/bin/python3, 3.11 or later)
#   --gpsd             also install gpsd and chrony (for [gps] source = "gpsd"): gpsd reads the
#                      receiver with -n, chrony takes its time (SHM 0) and PPS (docs/time.md)
#   --gnss-port DEV    the receiver gpsd reads (/etc/default/gpsd DEVICES) and that the udev rule
#                      keeps ModemManager off (with the ports named in agent.toml)
#   --pps MODE         chrony's pulse per second: auto (a pps-gpio overlay in config.txt means
#                      /dev/pps0; the default), none, /dev/ppsN, or sock:/dev/ppsN (gpsd reads it)
#   --i2c              an I2C UPS HAT ([power] source = "ina219"): the i2c group and
#                      DeviceAllow=char-i2c (also on when agent.toml already says ina219)
#   --modem            a cellular modem: ModemManager, and the polkit rule that lets the agent
#                      turn on its extended signal figures
#   --camera STACK     the Pi camera module's stack (bodycam/dashcam; docs/deploy.md):
#                      picamera2: python3-picamera2 from the Raspberry Pi archive, and the venv
#                      made with --system-site-packages to import it ([video] source =
#                      "picamera2": watermark burned in, the Pi's encoder);
#                      rpicam: rpicam-apps (source = "rpicam": its H.264 passed through);
#                      none (the default): a pure PyPI venv (USB cameras, IP cameras).
#                      An upgrade reuses the stack recorded in /opt/edge-agent.
#   --no-start         enable the service but do not start it even if the device is provisioned
#   --root DIR         stage everything under DIR (tests, inspection): no apt-get, useradd,
#                      chown or systemctl; each of those is printed instead
#   --dry-run          print every step, change nothing
#
# Idempotent: rerunning upgrades the package into a fresh venv and switches to it only once it
# works; /etc/edge-agent (config, keys) and /var/lib/edge-agent (spool) are never overwritten.
set -euo pipefail

readonly USER_NAME=edge-agent
readonly EXAMPLE_DEVICE_ID=cam-0001
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/common.sh
source "$SCRIPT_DIR/common.sh"
readonly SCRIPT_DIR

profile=""
source_path=""
wheelhouse=""
pip_args=()
python=/usr/bin/python3
with_gpsd=0
gnss_port=""
pps=auto
with_i2c=0
with_modem=0
camera=""
start=1
root=""
dry_run=0

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

while (($#)); do
	case "$1" in
	--profile) profile="${2:?--profile needs a value}"; shift ;;
	--profile=*) profile="${1#*=}" ;;
	--source) source_path="${2:?--source needs a path}"; shift ;;
	--source=*) source_path="${1#*=}" ;;
	--wheelhouse) wheelhouse="${2:?--wheelhouse needs a directory}"; shift ;;
	--wheelhouse=*) wheelhouse="${1#*=}" ;;
	--pip-arg) pip_args+=("${2:?--pip-arg needs a value}"); shift ;;
	--pip-arg=*) pip_args+=("${1#*=}") ;;
	--python) python="${2:?--python needs a path}"; shift ;;
	--python=*) python="${1#*=}" ;;
	--gpsd) with_gpsd=1 ;;
	--gnss-port) gnss_port="${2:?--gnss-port needs a device}"; shift ;;
	--gnss-port=*) gnss_port="${1#*=}" ;;
	--pps) pps="${2:?--pps needs auto, none, /dev/ppsN or sock:/dev/ppsN}"; shift ;;
	--pps=*) pps="${1#*=}" ;;
	--i2c) with_i2c=1 ;;
	--modem) with_modem=1 ;;
	--camera) camera="${2:?--camera needs picamera2, rpicam or none}"; shift ;;
	--camera=*) camera="${1#*=}" ;;
	--no-start) start=0 ;;
	--root) root="${2:?--root needs a directory}"; shift ;;
	--root=*) root="${1#*=}" ;;
	--dry-run) dry_run=1 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done

check_root

# make_dir PATH MODE OWNER:GROUP: create (or fix) one directory, not recursively.
make_dir() {
	local path="$1" mode="$2" owner="$3"
	[[ -d "$path" ]] || run mkdir -p "$path"
	run chmod "$mode" "$path"
	system chown "$owner" "$path"
}

# ------------------------------------------------------------------ what to install

recorded_profile=""
[[ -f "$OPT/profile" ]] && recorded_profile="$(<"$OPT/profile")"
profile="${profile:-$recorded_profile}"
[[ -n "$profile" ]] || die "--profile bodycam|dashcam|tracker is required on a first install"
case "$profile" in
tracker) extras="gps,power" ;;
bodycam | dashcam) extras="all" ;;
*) die "--profile $profile: must be bodycam, dashcam or tracker" ;;
esac

recorded_camera=""
[[ -f "$OPT/camera" ]] && recorded_camera="$(<"$OPT/camera")"
camera="${camera:-${recorded_camera:-none}}"
case "$camera" in
none | rpicam | picamera2) ;;
*) die "--camera $camera: must be picamera2, rpicam or none" ;;
esac
[[ "$camera" == none || "$extras" == all ]] || die "--camera $camera: only for bodycam or dashcam"

if [[ -z "$source_path" ]]; then
	source_path="$(cd "$SCRIPT_DIR/.." && pwd)"
	[[ -f "$source_path/pyproject.toml" ]] || die "no --source given and $source_path is not the source tree"
fi
[[ -e "$source_path" ]] || die "--source $source_path: no such file or directory"
source_path="$(cd "$(dirname "$source_path")" && pwd)/$(basename "$source_path")"
if [[ -d "$source_path" ]]; then
	[[ -f "$source_path/pyproject.toml" ]] || die "--source $source_path: no pyproject.toml there"
elif [[ "$source_path" != *.whl ]]; then
	die "--source $source_path: must be a source tree or a .whl"
fi
[[ -z "$wheelhouse" || -d "$wheelhouse" ]] || die "--wheelhouse $wheelhouse: not a directory"
[[ -x "$python" ]] || die "--python $python: not found (apt-get install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
	die "$python is older than Python 3.11"

mode=""
[[ -n "$root" ]] && mode+=", staged under $root"
((dry_run)) && mode+=", dry run: nothing is changed"
say "edge-agent: profile $profile, camera stack $camera, package ${source_path}[${extras}]$mode"

# ------------------------------------------------------------------ Debian packages

# python3-venv: the venv; ca-certificates: pip over HTTPS. The video profiles add PortAudio
# (sounddevice opens it at run time). OpenCV and PyAV come as wheels with their own FFmpeg:
# no ffmpeg package on the device.
packages=(python3-venv ca-certificates)
[[ "$extras" == all ]] && packages+=(libportaudio2)
((with_gpsd)) && packages+=(gpsd chrony)
# polkitd: the rule that lets the agent power off on a critical battery (power_and_modem below).
packages+=(polkitd)
((with_modem)) && packages+=(modemmanager)
# The Pi camera stack comes from the Raspberry Pi archive (archive.raspberrypi.com, configured
# on Raspberry Pi OS), not Debian's: its libcamera matches the kernel and firmware.
[[ "$camera" == picamera2 ]] && packages+=(python3-picamera2)
[[ "$camera" == rpicam ]] && packages+=(rpicam-apps-lite)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
say "Debian packages: ${packages[*]}"
if [[ -n "$root" ]]; then
	system apt-get install -y --no-install-recommends "${packages[@]}"
elif ((${#missing[@]})); then
	system apt-get update -qq
	system env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	echo "   all installed"
fi

# ------------------------------------------------------------------ user

say "user $USER_NAME (system, no login) in video, audio, dialout (and gpio where it exists)"
if [[ -n "$root" ]] || ! getent passwd "$USER_NAME" >/dev/null; then
	system useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
		--shell /usr/sbin/nologin --comment "edge-agent evidence agent" "$USER_NAME"
fi
for g in video audio dialout gpio; do
	if [[ -n "$root" ]] || getent group "$g" >/dev/null; then
		system usermod -a -G "$g" "$USER_NAME"
	fi
done

# ------------------------------------------------------------------ directories

say "directories"
make_dir "$ETC" 0750 "root:$USER_NAME"              # config: root writes, the agent reads
make_dir "$ETC/keys" 0700 "$USER_NAME:$USER_NAME"   # the device's signing key
make_dir "$ETC/tls" 0700 "$USER_NAME:$USER_NAME"    # the device's MQTT client certificate and key
make_dir "$STATE" 0700 "$USER_NAME:$USER_NAME"      # systemd's StateDirectory=
make_dir "$STATE/spool" 0700 "$USER_NAME:$USER_NAME" # the evidence spool
make_dir "$OPT" 0755 root:root

# ------------------------------------------------------------------ configuration

say "configuration"
run install -m 0640 "$SCRIPT_DIR/agent.example.toml" "$ETC/agent.example.toml"
system chown "root:$USER_NAME" "$ETC/agent.example.toml"
if [[ -e "$ETC/agent.toml" ]]; then
	echo "   $ETC/agent.toml exists: kept"
else
	run install -m 0640 "$SCRIPT_DIR/agent.example.toml" "$ETC/agent.toml"
	run sed -i "s/^profile = \"[a-z]*\"/profile = \"$profile\"/" "$ETC/agent.toml"
	system chown "root:$USER_NAME" "$ETC/agent.toml"
fi

# ------------------------------------------------------------------ the venv

# Each install builds a fresh venv-<time> and moves the venv symlink to it only after the new
# one runs: a failed upgrade (no network, a full disk) leaves the working agent in place, and a
# profile change leaves no OpenCV behind. The previous venv is kept for a manual rollback.
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
new="venv-$stamp-$$"
spec="${source_path}[${extras}]"
pip=("$OPT/$new/bin/python" -m pip install --disable-pip-version-check --no-input --no-cache-dir)
[[ -n "$wheelhouse" ]] && pip+=(--no-index --find-links "$wheelhouse")
pip+=(${pip_args[@]+"${pip_args[@]}"} "$spec")
# picamera2 imports simplejpeg and pidng from Raspberry Pi OS, built against its NumPy 1.x:
# the venv's NumPy (which shadows the system's) must stay 1.x for them to load.
[[ "$camera" == picamera2 ]] && pip+=("numpy<2")
previous=""
[[ -L "$OPT/venv" ]] && previous="$(readlink "$OPT/venv")"
say "venv $OPT/$new: pip install $spec"
venv_args=()
# picamera2 is imported from Raspberry Pi OS's python3-picamera2 (the PyPI one needs libcamera
# bindings built for the exact libcamera installed): only then does the venv see system site
# packages. The agent's own dependencies still come from the venv, which takes precedence.
[[ "$camera" == picamera2 ]] && venv_args+=(--system-site-packages)
build_venv() {
	run "$python" -m venv ${venv_args[@]+"${venv_args[@]}"} "$OPT/$new" || return 1
	run "${pip[@]}" || return 1
	# A venv with a missing or conflicting dependency, or whose command does not even start,
	# never becomes the live one.
	run "$OPT/$new/bin/python" -m pip check --disable-pip-version-check || return 1
	echo "+ $OPT/$new/bin/edge-agent --help >/dev/null"
	((dry_run)) || "$OPT/$new/bin/edge-agent" --help >/dev/null || return 1
}
if ! build_venv; then
	rm -rf "${OPT:?}/$new"
	die "the new venv failed (see above): nothing switched, ${previous:-no venv} stays live"
fi
run ln -sfn "$new" "$OPT/venv.tmp"
if [[ -d "$OPT/venv" && ! -L "$OPT/venv" ]]; then
	run rm -rf "$OPT/venv"
fi
run mv -T "$OPT/venv.tmp" "$OPT/venv"
if ! ((dry_run)); then
	echo "$profile" >"$OPT/profile"
	echo "$camera" >"$OPT/camera"
	# Keep the new venv and the one it replaced (for a rollback: ln -sfn OLD /opt/edge-agent/venv).
	for d in "$OPT"/venv-*; do
		[[ -d "$d" ]] || continue
		[[ "${d##*/}" == "$new" || "${d##*/}" == "$previous" ]] || run rm -rf "$d"
	done
fi
run mkdir -p "$(dirname "$BIN_LINK")"
run ln -sfn /opt/edge-agent/venv/bin/edge-agent "$BIN_LINK"
run install -m 0755 "$SCRIPT_DIR/uninstall.sh" "$OPT/uninstall.sh"
run install -m 0644 "$SCRIPT_DIR/common.sh" "$OPT/common.sh"
for doc in deploy.md time.md; do
	if [[ -f "$SCRIPT_DIR/../docs/$doc" ]]; then
		run mkdir -p "$OPT/docs"
		run install -m 0644 "$SCRIPT_DIR/../docs/$doc" "$OPT/docs/$doc"
	fi
done

# ------------------------------------------------------------------ serial ports and time

# The udev rule that keeps ModemManager's AT probes off the receiver and the trigger lines
# (ID_MM_DEVICE_IGNORE), from the ports agent.toml names, --gnss-port and every u-blox USB device.
setup_serial_ports() {
	local rules="$root/etc/udev/rules.d/77-edge-agent-serial.rules"
	local cmd=("$OPT/venv/bin/edge-agent" gps udev-rule --config "$ETC/agent.toml")
	[[ -n "$gnss_port" ]] && cmd+=(--port "$gnss_port")
	say "udev rule: ModemManager keeps off our serial ports"
	run mkdir -p "$(dirname "$rules")"
	printf '+'
	printf ' %q' "${cmd[@]}"
	echo " > $rules"
	if ! ((dry_run)); then
		"${cmd[@]}" >"$rules.tmp" || die "edge-agent gps udev-rule failed (see above)"
		chmod 0644 "$rules.tmp"
		mv "$rules.tmp" "$rules"
	fi
	system udevadm control --reload
	system udevadm trigger --subsystem-match=tty --action=change
}

# With --gpsd: gpsd reads the receiver without waiting for a client (-n) and chrony takes its
# time from gpsd's shared memory (and the pulse per second where wired); docs/time.md.
setup_time() {
	((with_gpsd)) || return 0
	local conf="$root/etc/chrony/conf.d/edge-agent-gnss.conf"
	local cmd=("$OPT/venv/bin/edge-agent" gps chrony-conf --pps "$pps" --boot-root "${root:-/}")
	say "time: chrony takes gpsd's GNSS time (refclock SHM 0) and PPS ($pps)"
	run mkdir -p "$(dirname "$conf")"
	printf '+'
	printf ' %q' "${cmd[@]}"
	echo " > $conf"
	if ! ((dry_run)); then
		"${cmd[@]}" >"$conf.tmp" || die "edge-agent gps chrony-conf failed (see above)"
		chmod 0644 "$conf.tmp"
		mv "$conf.tmp" "$conf"
	fi
	local defaults="$root/etc/default/gpsd"
	if [[ -n "$gnss_port" ]]; then
		local devices="$gnss_port"
		[[ "$pps" == sock:* ]] && devices+=" ${pps#sock:}"
		echo "+ write $defaults (DEVICES=\"$devices\", GPSD_OPTIONS=\"-n\")"
		if ! ((dry_run)); then
			mkdir -p "$(dirname "$defaults")"
			[[ -f "$defaults" && ! -f "$defaults.orig" ]] && cp -p "$defaults" "$defaults.orig"
			printf '# Written by edge-agent install.sh --gpsd --gnss-port; the original is %s.orig\n%s\n%s\n%s\n%s\n' \
				"$defaults" "START_DAEMON=\"true\"" "USBAUTO=\"false\"" "DEVICES=\"$devices\"" \
				"GPSD_OPTIONS=\"-n\"" >"$defaults"
		fi
	else
		echo "   gpsd: no --gnss-port; set DEVICES and GPSD_OPTIONS=\"-n\" in /etc/default/gpsd"
	fi
	# chrony first: gpsd sends PPS to a socket that chrony must have created.
	system systemctl restart chrony.service
	system systemctl enable gpsd.service
	system systemctl restart gpsd.service
}

setup_serial_ports
setup_time

# ------------------------------------------------------------------ power and modem

# The polkit rule for the critical-battery power-off (always: the power source may be set up
# later, by provisioning); the I2C device and group only for an I2C UPS HAT; the modem rule
# with --modem. Rerunning without them removes what they added.
power_and_modem() {
	local rules="$root/etc/polkit-1/rules.d"
	say "power: polkit rule for the critical-battery power-off"
	run mkdir -p "$rules"
	run install -m 0644 "$SCRIPT_DIR/polkit/50-edge-agent-power-off.rules" "$rules/"
	if ((with_modem)); then
		say "modem: polkit rule for ModemManager's extended signal figures"
		run install -m 0644 "$SCRIPT_DIR/polkit/51-edge-agent-modem.rules" "$rules/"
	elif [[ -e "$rules/51-edge-agent-modem.rules" ]]; then
		run rm -f "$rules/51-edge-agent-modem.rules"
	fi
	local dropin="$UNIT_DIR/edge-agent.service.d/20-i2c.conf"
	if ((!with_i2c)) && [[ -f "$ETC/agent.toml" ]] &&
		"$python" - "$ETC/agent.toml" <<'EOF'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        sys.exit(0 if tomllib.load(f).get("power", {}).get("source") == "ina219" else 1)
except (OSError, tomllib.TOMLDecodeError):
    sys.exit(1)
EOF
	then
		with_i2c=1
		echo "   agent.toml reads the battery over I2C ([power] source = \"ina219\")"
	fi
	if ((with_i2c)); then
		say "power: I2C for the UPS HAT (group i2c, DeviceAllow=char-i2c)"
		if [[ -n "$root" ]] || getent group i2c >/dev/null; then
			system usermod -a -G i2c "$USER_NAME"
		else
			echo "   no i2c group yet: enable I2C (raspi-config nonint do_i2c 0) and rerun"
		fi
		echo "+ write $dropin"
		if ! ((dry_run)); then
			printf '%s\n' "# Written by install.sh (--i2c, or [power] source = \"ina219\"); rerun it to change." \
				"[Service]" "DeviceAllow=char-i2c rw" >"$dropin"
			chmod 0644 "$dropin"
		fi
	elif [[ -e "$dropin" ]]; then
		run rm -f "$dropin"
	fi
}

# ------------------------------------------------------------------ systemd

say "systemd unit"
run mkdir -p "$UNIT_DIR/edge-agent.service.d"
run install -m 0644 "$SCRIPT_DIR/edge-agent.service" "$UNIT_DIR/edge-agent.service"
if [[ "$profile" == tracker ]]; then
	mdwe="MemoryDenyWriteExecute=yes"
	why="# tracker: no audio or video stack, so no writable+executable memory is ever needed."
else
	mdwe="MemoryDenyWriteExecute=no"
	why="# $profile: sounddevice's cffi callbacks need writable+executable memory (docs/deploy.md)."
fi
echo "+ write $UNIT_DIR/edge-agent.service.d/10-profile.conf ($mdwe)"
if ! ((dry_run)); then
	printf '# Written by install.sh --profile %s; rerun it to change.\n%s\n[Service]\n%s\n' \
		"$profile" "$why" "$mdwe" >"$UNIT_DIR/edge-agent.service.d/10-profile.conf"
	chmod 0644 "$UNIT_DIR/edge-agent.service.d/10-profile.conf"
fi
# The tracker's memory settings (allocator environment): tracker only.
tracker_dropin="$UNIT_DIR/edge-agent.service.d/15-tracker.conf"
if [[ "$profile" == tracker ]]; then
	run install -m 0644 "$SCRIPT_DIR/edge-agent-tracker.conf" "$tracker_dropin"
elif [[ -e "$tracker_dropin" ]]; then
	run rm -f "$tracker_dropin"
fi
power_and_modem
camera_dropin="$UNIT_DIR/edge-agent.service.d/20-camera.conf"
if [[ "$camera" == none ]]; then
	[[ -e "$camera_dropin" ]] && run rm -f "$camera_dropin"
else
	# libcamera opens the media controller (/dev/media*) and allocates frame buffers from the
	# DMA heaps; /dev/video* (the ISP, the encoder) is already allowed by the unit.
	echo "+ write $camera_dropin (libcamera devices for $camera)"
	if ! ((dry_run)); then
		printf '%s
' "# Written by install.sh --camera $camera; rerun it to change." "[Service]" \
			"DeviceAllow=char-media rw" "DeviceAllow=/dev/dma_heap/linux,cma rw" \
			"DeviceAllow=/dev/dma_heap/system rw" >"$camera_dropin"
		chmod 0644 "$camera_dropin"
	fi
fi
system systemctl daemon-reload
system systemctl enable edge-agent.service

# Start only a provisioned device: a config naming a real device id, and its key.
provisioned() {
	[[ -f "$ETC/agent.toml" ]] || return 1
	local out id key
	out="$("$python" - "$ETC/agent.toml" <<'EOF'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        cfg = tomllib.load(f)
except (OSError, tomllib.TOMLDecodeError):
    sys.exit(1)
print(cfg.get("device", {}).get("id", ""))
print(cfg.get("keys", {}).get("device_key", "/etc/edge-agent/keys/device.key"))
EOF
	)" || return 1
	id="$(sed -n 1p <<<"$out")"
	key="$(sed -n 2p <<<"$out")"
	[[ -n "$id" && "$id" != "$EXAMPLE_DEVICE_ID" && -f "$root$key" ]]
}

if provisioned; then
	if ((start)); then
		say "provisioned: (re)starting edge-agent"
		system systemctl restart edge-agent.service
	else
		say "provisioned, not started (--no-start): systemctl start edge-agent"
	fi
else
	say "installed and enabled, not started: this device is not provisioned yet."
	echo "    Next: sudo edge-agent provision      (then: systemctl start edge-agent)"
	echo "    Logs: journalctl -u edge-agent -f"
fi
