"""agent/runtime/deferred.py: a module `edge-agent run` defers behaves as imported the moment
anything uses it (each case in a fresh interpreter: it changes sys.modules)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run_py(code: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_paho_imports_with_urllib_request_deferred() -> None:
    """paho binds the stand-in and never reads it (no PySocks): the module is not imported."""
    out = run_py(
        """
        import sys
        from agent.runtime.deferred import Deferred, defer
        defer()
        import paho.mqtt.client
        client = paho.mqtt.client.Client(paho.mqtt.client.CallbackAPIVersion.VERSION2)
        print(type(sys.modules["urllib.request"]).__name__, "http.client" in sys.modules,
              "email.message" in sys.modules)
        """
    )
    assert out.split() == ["Deferred", "False", "False"]


@pytest.mark.parametrize(
    "use",
    [
        "import urllib.request; f = urllib.request.getproxies",
        "from urllib.request import getproxies as f",
        "import urllib; f = urllib.request.proxy_bypass",
        "import paho.mqtt.client as c; f = c.urllib.request.getproxies",
    ],
)
def test_first_use_imports_the_real_module(use: str) -> None:
    out = run_py(
        f"""
        import sys, types
        from agent.runtime.deferred import Deferred, defer
        defer()
        import paho.mqtt.client
        stub = sys.modules["urllib.request"]
        {use}
        real = sys.modules["urllib.request"]
        import urllib
        assert not isinstance(real, Deferred) and urllib.request is real, real
        assert callable(f) and f.__module__ == "urllib.request"
        # The stand-in still answers (code that bound it early), from the same module.
        assert stub.getproxies is real.getproxies and sys.modules["urllib.request"] is real
        assert "http.client" in sys.modules
        # Importing it again gives the real module; a second defer() leaves it alone.
        defer()
        import urllib.request as again
        assert again is real and sys.modules["urllib.request"] is real
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_missing_attribute_is_an_attribute_error() -> None:
    out = run_py(
        """
        import sys
        from agent.runtime.deferred import defer
        defer()
        import urllib.request
        print(hasattr(urllib.request, "no_such_name"), hasattr(urllib.request, "urlopen"))
        """
    )
    assert out.split() == ["False", "True"]


def test_threads_racing_on_first_use_get_one_module() -> None:
    out = run_py(
        """
        import sys, threading
        from agent.runtime.deferred import defer
        defer()
        import urllib
        stub = urllib.request
        got, start = [], threading.Barrier(8)
        def use():
            start.wait()
            got.append(stub.Request)
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(got), len({id(g) for g in got}), sys.modules["urllib.request"].Request is got[0])
        """
    )
    assert out.split() == ["8", "1", "True"]
