"""The chrony configuration the installer writes when the GNSS receiver goes through gpsd.

``edge-agent gps chrony-conf [--pps auto|none|/dev/ppsN|sock:/dev/ppsN]`` prints it;
``deploy/install.sh --gpsd`` installs it as ``/etc/chrony/conf.d/edge-agent-gnss.conf``
(Debian's chrony.conf reads ``confdir /etc/chrony/conf.d``). The choices, documented in
docs/time.md:

* **NMEA time, SHM 0**: gpsd (run with ``-n``, so it reads the receiver with no client)
  writes each cycle's time into shared memory segment 0. NMEA arrives some 0.05-0.5 s after
  the second it names (receiver, baud rate, sentence order): ``offset`` compensates the typical
  latency (measure yours against PPS: ``chronyc sourcestats``) and ``delay`` 0.2 widens the
  error bound chrony reports, so the clock is never claimed better than NMEA can give.
* **with PPS** (``dtoverlay=pps-gpio`` gives ``/dev/pps0``): the pulse marks the second to a
  few microseconds; ``lock GNSS`` takes the second's number from the NMEA. NMEA is then
  ``noselect``: it only numbers the pulses, and never pulls a microsecond clock by its own
  jitter. No ``trust``: chrony may still reject a GNSS that disagrees with good NTP servers.
* **gpsd's SOCK** (``sock:/dev/pps0``): where gpsd itself reads the PPS (it is given the PPS
  device, or the receiver's DCD line), it sends the pulses to chrony's socket
  ``/run/chrony.<device>.sock``; chrony must create it before gpsd starts.
"""

from __future__ import annotations

from pathlib import Path

CONF_FILE = "/etc/chrony/conf.d/edge-agent-gnss.conf"
NMEA_OFFSET_S = 0.1
NMEA_DELAY_S = 0.2


def sock_path(device: str) -> str:
    """The socket gpsd (as root) sends a device's PPS samples to."""
    return f"/run/chrony.{Path(device).name}.sock"


def render(pps: str | None = None, *, nmea_offset_s: float = NMEA_OFFSET_S) -> str:
    """The conf.d snippet: SHM 0 alone, or SHM 0 numbering a PPS (``/dev/ppsN`` read by
    chrony, or ``sock:/dev/ppsN`` read by gpsd)."""
    lines = [
        "# Written by edge-agent's deploy/install.sh --gpsd (`edge-agent gps chrony-conf`);",
        "# rerun it to change. Why each choice: /opt/edge-agent/docs/time.md.",
        "# gpsd's time from the receiver's NMEA (shared memory segment 0; gpsd runs with -n).",
    ]
    nmea = f"refclock SHM 0 refid GNSS poll 3 offset {nmea_offset_s:g} delay {NMEA_DELAY_S:g}"
    if pps is None:
        lines.append(nmea)
    else:
        lines += [
            "# With a pulse per second, NMEA only numbers the pulses (noselect).",
            nmea + " noselect",
        ]
        if pps.startswith("sock:"):
            device = pps.removeprefix("sock:")
            lines += [
                f"# The pulse, read by gpsd from {device} and sent to chrony's socket.",
                f"refclock SOCK {sock_path(device)} refid PPS lock GNSS poll 3",
            ]
        else:
            if not pps.startswith("/dev/"):
                raise ValueError(f"--pps {pps!r}: /dev/ppsN, sock:/dev/ppsN, auto or none")
            lines += [
                f"# The pulse from the pps-gpio overlay ({pps}), numbered by the NMEA time.",
                f"refclock PPS {pps} refid PPS lock GNSS poll 3",
            ]
    return "\n".join(lines) + "\n"
