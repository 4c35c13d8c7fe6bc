"""ModemManager through a simulated ``mmcli`` (an executable printing mmcli-shaped JSON, with
mmcli's error lines and exit codes): the fields, extended signal set up once, bearer byte
counters, a missing modem / ModemManager / mmcli, garbage and a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cellular.mmcli import ModemManagerLink, parse_bearer, parse_modem, parse_signal
from agent.errors import FormatError, SourceError
from agent.labs.mmcli import modem_doc, set_scenario, signal_doc, write_fake_mmcli


@pytest.fixture
def mmcli(tmp_path: Path) -> Path:
    return write_fake_mmcli(tmp_path / "mm")


def _link(exe: Path, **kw: object) -> ModemManagerLink:
    return ModemManagerLink(str(exe), "any", timeout_s=kw.pop("timeout_s", 10.0),  # type: ignore[arg-type]
                            signal_rate_s=kw.pop("signal_rate_s", 30))  # type: ignore[arg-type]  # fmt: skip


def _calls(exe: Path) -> list[str]:
    return (exe.parent / "modem.json.calls").read_text().splitlines()


def test_connected_modem_with_signal_set_up_once_and_bearer_counters(mmcli: Path) -> None:
    link = _link(mmcli)
    r = link.read()
    assert r.state == "connected" and r.registered and r.registration == "home"
    assert (r.operator, r.operator_code, r.access_tech) == ("CMCC", "46000", ("lte",))
    assert r.signal_pct == 67 and r.model == "EC25"
    assert r.bytes() == (1234567, 7654321)
    assert r.bearers[0].interface == "wwan0" and r.bearers[0].connected is True
    # ModemManager was not polling extended figures (rate 0): the agent asked for them once
    assert r.signal == {} and "turned on" in (r.signal_note or "")
    r = link.read()
    assert r.signal == {"lte": {"rssi": -65.0, "rsrp": -95.0, "rsrq": -11.0, "sinr": 12.5}}
    assert r.signal_note is None
    assert [c for c in _calls(mmcli) if "--signal-setup" in c] == ["-m any --signal-setup=30"]
    assert "-J -b /org/freedesktop/ModemManager1/Bearer/0" in _calls(mmcli)


def test_signal_setup_off_and_refused(mmcli: Path) -> None:
    r = _link(mmcli, signal_rate_s=0).read()
    assert r.signal == {} and r.signal_note is None
    assert not [c for c in _calls(mmcli) if "--signal-setup" in c]


@pytest.mark.parametrize(
    ("scenario", "state", "registered"),
    [
        ({"state": "searching", "registration": "searching", "operator": None}, "searching", False),
        ({"state": "registered", "registration": "roaming"}, "registered", True),
        ({"state": "registered", "registration": "denied"}, "registered", False),
        (
            {"state": "failed", "failed_reason": "sim-missing", "registration": None},
            "failed",
            False,
        ),
        ({"state": "locked", "registration": None}, "locked", False),
    ],
)
def test_registration_states(
    mmcli: Path, scenario: dict[str, object], state: str, registered: bool
) -> None:
    set_scenario(mmcli, **scenario)
    r = _link(mmcli).read()
    assert r.state == state and r.registered is registered and r.present
    assert r.bearers == ()  # not connected: no bearer
    if state == "failed":
        assert r.failed_reason == "sim-missing"


def test_no_modem_no_modemmanager_no_mmcli_are_states(mmcli: Path, tmp_path: Path) -> None:
    set_scenario(mmcli, modem="absent")
    r = _link(mmcli).read()
    assert r.state == "absent" and not r.present and r.to_json()["bytes_rx"] is None
    set_scenario(mmcli, modem="no-modemmanager")
    assert _link(mmcli).read().state == "no-modemmanager"
    assert _link(tmp_path / "no" / "mmcli").read().state == "no-mmcli"


def test_garbage_and_a_hang_are_clear_errors(mmcli: Path) -> None:
    set_scenario(mmcli, modem="garbage")
    with pytest.raises(SourceError, match="mmcli printed garbage"):
        _link(mmcli).read()
    set_scenario(mmcli, modem="hang")
    with pytest.raises(SourceError, match="no answer within 1 s"):
        _link(mmcli, timeout_s=1.0).read()


def _doc(**changes: object) -> str:
    doc = modem_doc({"state": "connected", "registration": "home", "operator": "X",
                     "operator_code": "00101", "access_tech": ["lte"],
                     "signal_quality": 5})  # fmt: skip
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"modem.generic": "x"}, "no modem.generic"),
        ({"modem.generic.state": 5}, "no state"),
        ({"modem.generic.state": "connected; rm -rf /"}, "not a ModemManager word"),
        ({"modem.generic.signal-quality": {"value": "101"}}, "not a count"),
        ({"modem.generic.signal-quality": {"value": "-1"}}, "not a count"),
        ({"modem.generic.bearers": "oops"}, "not a list"),
        ({"modem.generic.access-technologies": {"a": 1}}, "not a list"),
    ],
)
def test_hostile_modem_json(change: dict[str, object], why: str) -> None:
    text = _doc(**{k.replace(".", "."): v for k, v in change.items()})
    with pytest.raises(FormatError, match=why):
        parse_modem(text)


def test_hostile_text_is_bounded_and_foreign_bearer_paths_ignored() -> None:
    f = parse_modem(_doc(**{
        "modem.3gpp.operator-name": "A\x1b[31mB" + "x" * 500,
        "modem.generic.bearers": ["/etc/passwd", "/org/freedesktop/ModemManager1/Bearer/3"],
    }))  # fmt: skip
    assert f["operator"] == "A[31mB" + "x" * 58 and len(f["operator"]) == 64
    assert f["bearers"] == ["/org/freedesktop/ModemManager1/Bearer/3"]
    with pytest.raises(FormatError):
        parse_modem("[" * 100)
    with pytest.raises(FormatError):
        parse_modem('{"modem": 1}' + " " * (300 * 1024))
    sig = signal_doc({"signal_rate": 10, "lte": {"rsrp": -95.0}})
    sig["modem"]["signal"]["lte"]["rsrq"] = "1e999"
    with pytest.raises(FormatError, match=r"out of range|not a number"):
        parse_signal(json.dumps(sig))
    with pytest.raises(FormatError, match="not a count"):
        parse_bearer('{"bearer": {"stats": {"bytes-tx": "12abc"}}}', "/p")
