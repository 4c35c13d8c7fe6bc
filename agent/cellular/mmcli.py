"""ModemManager's view of the modem, through ``mmcli -J`` (its command-line client's JSON).

mmcli prints every value as a JSON string (``"--"`` where unknown) under dotted keys such as
``modem.generic.state``, ``modem.3gpp.registration-state``, ``modem.signal.lte.rsrp`` and
``bearer.stats.bytes-tx``. Three calls make one reading:

- ``mmcli -J -m any``: state, access technologies, signal quality (percent), operator,
  registration and the bearers' D-Bus paths;
- ``mmcli -J -m any --signal-get``: RSSI/RSRP/RSRQ/SINR per technology, where ModemManager
  polls them (``--signal-setup=RATE`` turns that on; a rate of 0 means off);
- ``mmcli -J -b PATH`` per bearer: connected, interface and the modem's own byte counters.

Everything mmcli prints is read as untrusted input (bounded JSON, strings of known shape);
the command is injectable, so the tests run a simulated twin (a fake ``mmcli`` executable).
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import boundedjson
from agent.errors import FormatError, SourceError

#: (argv, timeout) -> (exit code, stdout, stderr); FileNotFoundError when there is no mmcli.
Runner = Callable[[list[str], float], tuple[int, str, str]]

MAX_JSON = 256 * 1024
MAX_BEARERS = 4
#: 3GPP registration states in which the modem can carry data.
REGISTERED = frozenset(
    {"home", "roaming", "home-sms-only", "roaming-sms-only", "home-csfb-not-preferred",
     "roaming-csfb-not-preferred"}
)  # fmt: skip
#: Modem states (MMModemState) that imply registration where no 3GPP section exists.
REGISTERED_STATES = frozenset({"registered", "connecting", "connected", "disconnecting"})
SIGNAL_TECHS = ("5g", "lte", "umts", "gsm", "evdo", "cdma1x")
SIGNAL_FIELDS = {"rssi": "rssi", "rsrp": "rsrp", "rsrq": "rsrq", "snr": "sinr", "rscp": "rscp",
                 "ecio": "ecio", "sinr": "sinr"}  # fmt: skip
_WORD = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,39}\Z")
_PATH = re.compile(r"^/org/freedesktop/ModemManager1/Bearer/[0-9]{1,6}\Z")


def run_mmcli(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        res = subprocess.run(
            argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"{' '.join(argv[:4])}: no answer within {timeout:g} s") from None
    out = res.stdout[: MAX_JSON + 1].decode("utf-8", "replace")
    err = res.stderr[:2000].decode("utf-8", "replace")
    return res.returncode, out, err


@dataclass(frozen=True)
class Bearer:
    path: str
    connected: bool | None = None
    interface: str | None = None
    bytes_rx: int | None = None
    bytes_tx: int | None = None
    total_bytes_rx: int | None = None
    total_bytes_tx: int | None = None
    duration_s: int | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ModemReading:
    """One look at the modem. ``state`` is ModemManager's (``connected``, ``registered``,
    ``searching``, ``failed``, ...), or ``absent`` / ``no-modemmanager`` / ``no-mmcli``."""

    state: str
    registered: bool = False
    registration: str | None = None
    operator: str | None = None
    operator_code: str | None = None
    access_tech: tuple[str, ...] = ()
    signal_pct: int | None = None
    signal: dict[str, dict[str, float]] = field(default_factory=dict)
    signal_note: str | None = None
    failed_reason: str | None = None
    model: str | None = None
    bearers: tuple[Bearer, ...] = ()

    @property
    def present(self) -> bool:
        return self.state not in ("absent", "no-modemmanager", "no-mmcli")

    def bytes(self) -> tuple[int | None, int | None]:
        """The connected bearers' rx/tx byte counters added up (None: the modem has none)."""
        rx = [b.bytes_rx for b in self.bearers if b.bytes_rx is not None]
        tx = [b.bytes_tx for b in self.bearers if b.bytes_tx is not None]
        return (sum(rx) if rx else None, sum(tx) if tx else None)

    def to_json(self) -> dict[str, object]:
        rx, tx = self.bytes()
        out: dict[str, object] = {
            "state": self.state,
            "registered": self.registered,
            "registration": self.registration,
            "operator": self.operator,
            "operator_code": self.operator_code,
            "access_tech": list(self.access_tech),
            "signal_pct": self.signal_pct,
            "signal": self.signal,
            "bytes_rx": rx,
            "bytes_tx": tx,
            "bearers": [b.to_json() for b in self.bearers],
        }
        for k in ("signal_note", "failed_reason", "model"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


# --------------------------------------------------------------------------- parsing


def _dig(doc: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(p)
    return doc


def _table(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _text(v: Any, limit: int = 64) -> str | None:
    """A printable string value, or None for mmcli's "--" and anything else."""
    if not isinstance(v, str) or v in ("--", ""):
        return None
    v = "".join(c for c in v if c.isprintable())[:limit].strip()
    return v or None


def _word(v: Any, what: str) -> str | None:
    t = _text(v)
    if t is None:
        return None
    if not _WORD.match(t):
        raise FormatError(f"mmcli: {what} {t!r} is not a ModemManager word")
    return t


def _int(v: Any, what: str, hi: int = 2**63) -> int | None:
    t = _text(v, 24)
    if t is None:
        return None
    if not t.isdigit() or int(t) > hi:
        raise FormatError(f"mmcli: {what} {t!r} is not a count")
    return int(t)


def _float(v: Any, what: str) -> float | None:
    t = _text(v, 24)
    if t is None:
        return None
    try:
        f = float(t)
    except ValueError:
        raise FormatError(f"mmcli: {what} {t!r} is not a number") from None
    if not math.isfinite(f) or abs(f) > 1000:
        raise FormatError(f"mmcli: {what} {t!r} is out of range")
    return f


def _words(v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise FormatError(f"mmcli: {what} is not a list")
    out = []
    for item in v[:16]:
        w = _word(item, what)
        if w is not None and w != "unknown":
            out.append(w)
    return tuple(out)


def parse_modem(text: str) -> dict[str, Any]:
    """``mmcli -J -m any``: the fields we use (FormatError on anything else)."""
    doc = boundedjson.loads(text, "mmcli modem JSON", max_bytes=MAX_JSON)
    modem = doc.get("modem")
    if not isinstance(modem, dict) or not isinstance(modem.get("generic"), dict):
        raise FormatError("mmcli: no modem.generic object in its output")
    g = modem["generic"]
    state = _word(g.get("state"), "state")
    if state is None:
        raise FormatError("mmcli: the modem has no state")
    sq = _int(_dig(g, "signal-quality", "value"), "signal quality", 100)
    bearers = g.get("bearers") or []
    if not isinstance(bearers, list):
        raise FormatError("mmcli: modem.generic.bearers is not a list")
    paths = [b for b in bearers[:MAX_BEARERS] if isinstance(b, str) and _PATH.match(b)]
    three = _table(modem.get("3gpp"))
    return {
        "state": state,
        "failed_reason": _word(g.get("state-failed-reason"), "failed reason"),
        "access_tech": _words(g.get("access-technologies"), "access technology"),
        "signal_pct": sq,
        "model": _text(g.get("model")),
        "registration": _word(three.get("registration-state"), "registration state"),
        "operator": _text(three.get("operator-name")),
        "operator_code": _text(three.get("operator-code"), 8),
        "bearers": paths,
    }


def parse_signal(text: str) -> tuple[dict[str, dict[str, float]], int | None]:
    """``--signal-get``: the figures per technology, and ModemManager's refresh rate."""
    doc = boundedjson.loads(text, "mmcli signal JSON", max_bytes=MAX_JSON)
    sig = _dig(doc, "modem", "signal")
    if not isinstance(sig, dict):
        raise FormatError("mmcli: no modem.signal object in its output")
    out: dict[str, dict[str, float]] = {}
    for tech in SIGNAL_TECHS:
        values = sig.get(tech)
        if not isinstance(values, dict):
            continue
        got = {}
        for key, name in SIGNAL_FIELDS.items():
            f = _float(values.get(key), f"{tech} {key}")
            if f is not None:
                got[name] = f
        if got:
            out[tech] = got
    rate = _int(_dig(sig, "refresh", "rate"), "signal refresh rate", 86400)
    return out, rate


def parse_bearer(text: str, path: str) -> Bearer:
    doc = boundedjson.loads(text, "mmcli bearer JSON", max_bytes=MAX_JSON)
    b = doc.get("bearer")
    if not isinstance(b, dict):
        raise FormatError("mmcli: no bearer object in its output")
    st = _table(b.get("stats"))
    status = _table(b.get("status"))
    conn = _text(status.get("connected"))
    return Bearer(
        path=path,
        connected={"yes": True, "no": False}.get(conn or ""),
        interface=_text(status.get("interface"), 16),
        bytes_rx=_int(st.get("bytes-rx"), "bytes rx"),
        bytes_tx=_int(st.get("bytes-tx"), "bytes tx"),
        total_bytes_rx=_int(st.get("total-bytes-rx"), "total bytes rx"),
        total_bytes_tx=_int(st.get("total-bytes-tx"), "total bytes tx"),
        duration_s=_int(st.get("duration"), "duration"),
    )


def registered(fields: dict[str, Any]) -> bool:
    reg = fields.get("registration")
    if reg is not None:
        return reg in REGISTERED
    return fields["state"] in REGISTERED_STATES


# --------------------------------------------------------------------------- the client


class ModemManagerLink:
    """Reads the modem through mmcli; ``read`` never raises for an absent modem or a missing
    ModemManager (those are states), only SourceError for a failing or garbled mmcli."""

    def __init__(
        self, mmcli: str, modem: str, *, timeout_s: float, signal_rate_s: int,
        run: Runner = run_mmcli,
    ) -> None:  # fmt: skip
        self.mmcli = mmcli
        self.modem = modem
        self.timeout_s = timeout_s
        self.signal_rate_s = signal_rate_s
        self.run = run
        self._setup_tried: set[str] = set()

    def _call(self, *args: str) -> tuple[int, str, str]:
        argv = [self.mmcli, *args]
        try:
            return self.run(argv, self.timeout_s)
        except FileNotFoundError:
            raise _NoMmcli from None
        except OSError as exc:
            raise SourceError(f"{self.mmcli}: {exc}") from None

    def read(self) -> ModemReading:
        try:
            return self._read()
        except _NoMmcli:
            return ModemReading("no-mmcli")
        except FormatError as exc:
            raise SourceError(f"mmcli printed garbage: {exc}") from None

    def _read(self) -> ModemReading:
        rc, out, err = self._call("-J", "-m", self.modem)
        if rc != 0:
            if "couldn't find the ModemManager process" in err:
                return ModemReading("no-modemmanager")
            if "couldn't find modem" in err or "no modems found" in err:
                return ModemReading("absent")
            raise SourceError(f"mmcli -m {self.modem} failed ({rc}): {err.strip()[:200]}")
        f = parse_modem(out)
        signal, note = self._signal()
        bearers = tuple(self._bearer(p) for p in f["bearers"])
        return ModemReading(
            state=f["state"],
            registered=registered(f),
            registration=f["registration"],
            operator=f["operator"],
            operator_code=f["operator_code"],
            access_tech=f["access_tech"],
            signal_pct=f["signal_pct"],
            signal=signal,
            signal_note=note,
            failed_reason=f["failed_reason"],
            model=f["model"],
            bearers=bearers,
        )

    def _signal(self) -> tuple[dict[str, dict[str, float]], str | None]:
        rc, out, err = self._call("-J", "-m", self.modem, "--signal-get")
        if rc != 0:
            return {}, f"--signal-get failed: {err.strip()[:120]}"
        signal, rate = parse_signal(out)
        if rate == 0 and self.signal_rate_s > 0:
            if self.modem in self._setup_tried:
                return signal, "extended signal figures are off (mmcli --signal-setup refused)"
            self._setup_tried.add(self.modem)
            rc, _out, err = self._call("-m", self.modem, f"--signal-setup={self.signal_rate_s}")
            if rc != 0:
                return signal, f"mmcli --signal-setup refused: {err.strip()[:120]}"
            return signal, "extended signal figures turned on; they follow"
        return signal, None

    def _bearer(self, path: str) -> Bearer:
        rc, out, _err = self._call("-J", "-b", path)
        if rc != 0:
            return Bearer(path)
        return parse_bearer(out, path)


class _NoMmcli(Exception):
    pass
