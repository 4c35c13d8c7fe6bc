"""The pages' gatekeeping below HTTP: who counts as one client, which Host names pass, that a
throttle's memory is bounded, and that HTML escapes by default."""

from __future__ import annotations

from agent.web.auth import HostCheck, Policy, Sessions, Throttle, client_key
from agent.web.markup import Markup, html, join
from tests.web.conftest import Clock


def test_a_client_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_host_names_that_pass() -> None:
    check = HostCheck(["truck-17.local"])
    for ok in (
        "127.0.0.1",
        "127.0.0.1:8080",
        "192.168.7.1:80",
        "[::1]:8080",
        "[fe80::1]",
        "localhost:8080",
        "LOCALHOST",
        "truck-17.local",
        "Truck-17.Local.:8080",
    ):
        assert check.allowed(ok), ok
    for bad in (
        "",
        "evil.example",
        "evil.example:8080",
        "truck-17.local.evil.example",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "[::1",
        "::1]",
        "127.0.0.1:80:80",
        "127.0.0.1:x",
        "user@127.0.0.1",
        "127.0.0.1/x",
        "a b",
    ):
        assert not check.allowed(bad), bad


def test_a_throttle_remembers_a_bounded_number_of_clients() -> None:
    clock = Clock()
    t = Throttle("t", {"login": Policy(2, 60.0)}, clock, max_clients=3)
    t.failure("10.0.0.1", "login")
    t.failure("10.0.0.1", "login")  # locked
    for n in range(2, 50):
        t.failure(f"10.0.0.{n}", "login")
    assert len(t._entries) == 3
    assert t.locked("10.0.0.1", "login") > 0  # an active lockout is the last to go
    clock.advance(61)
    assert t.locked("10.0.0.1", "login") == 0
    assert t.counts["failures"] == 50 and t.counts["lockouts"] == 1


def test_sessions_are_bounded_and_end() -> None:
    clock = Clock()
    s = Sessions(clock, lifetime_s=100.0, idle_s=30.0, max_sessions=2)
    a, b, c = s.create(), s.create(), s.create()
    assert not s.valid(a) and s.valid(b) and s.valid(c)  # the oldest made room
    assert not s.valid("") and not s.valid("x" * 1000)
    clock.advance(31)
    assert not s.valid(b)
    s.drop(c)
    assert not s.valid(c)


def test_html_escapes_every_value_unless_it_is_markup() -> None:
    evil = "<script>alert('x')</script>"
    out = html(
        "<p title='{t}'>{x} {n:.1f}</p>{inner}",
        t=evil,
        x=evil,
        n=2.25,
        inner=html("<b>{v}</b>", v=evil),
    )
    assert "<script>" not in out and out.count("&lt;script&gt;") == 3
    assert "&#x27;x&#x27;" in out and "2.2" in out and "<b>" in out
    assert isinstance(out, Markup)
    assert join(["<i>", html("<i>{v}</i>", v=1)], ", ") == "&lt;i&gt;, <i>1</i>"
