"""The running agent: the composition root (``app.py``) and what only it uses.

``app.py`` builds and starts every long-lived part; only the ``run`` command imports it
(tests/core/test_architecture.py holds that). Beside it: the watched parts and the one
shutdown deadline (``liveness.py``), the heartbeat and the systemd watchdog (``heartbeat.py``,
``systemd.py``), the status figures (``status.py``) and how ``edge-agent status`` prints them
(``status_text.py``), the alarms the root raises itself (``alarms.py``), the commands each
channel may give (``routing.py``), what the root reads from the board (``readers.py``), the
device-local control socket (``local_control.py``), ``[health]`` (``settings.py``), the
modules ``run`` defers until first use (``deferred.py``) and the CLI of the running agent
(``cli.py``: run, status, record, still, mute).
"""
