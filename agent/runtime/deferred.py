"""Modules ``edge-agent run`` defers: imported by a library at start, used only by a branch the
agent does not take (issue 19 item 4, docs/scale.md "Tracker memory").

paho-mqtt imports :mod:`urllib.request` at module level for one branch: finding an MQTT proxy
in the environment, which it does only when PySocks (``socks``) is installed; the agent does
not depend on it. Imported, urllib.request brings http.client, the email package, tempfile
and more: 1.2 MB of a tracker's 40 MB budget, for nothing.

:func:`defer` puts a stand-in in ``sys.modules`` before the library is imported. The library's
``import urllib.request`` then binds the stand-in, and the first attribute read from it
imports the real module (which takes its place in ``sys.modules`` and on its package) and
answers from it: code that does use the module behaves as before, one import later.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading
import types

# paho-mqtt's proxy lookup (paho/mqtt/client.py, Client._get_proxy), used only with PySocks.
DEFERRED = ("urllib.request",)

_lock = threading.RLock()


class Deferred(types.ModuleType):
    """A module not imported yet: reading any attribute it lacks imports the real one."""

    def __getattr__(self, attr: str) -> object:
        # Only for attributes the stand-in does not have (its __name__, __spec__, __doc__ and
        # __dict__ are its own, so the import system can look at it without importing).
        return getattr(real_module(self), attr)


def real_module(stub: Deferred) -> types.ModuleType:
    """The module ``stub`` stands for, imported now if it was not yet."""
    name = stub.__name__
    with _lock:
        current = sys.modules.get(name)
        if current is not None and current is not stub:
            return current
        if current is stub:
            del sys.modules[name]
        # Imports it and sets it on its package (urllib.request on urllib), as any import does.
        return importlib.import_module(name)


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """A stand-in for each of ``names`` not imported yet (an imported one is left alone)."""
    with _lock:
        for name in names:
            if name in sys.modules:
                continue
            stub = Deferred(name, f"{name}, not imported yet (agent.runtime.deferred)")
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = stub
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(importlib.import_module(parent), child, stub)
