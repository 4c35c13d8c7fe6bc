"""Test rigs, simulators and the demo: nothing here runs on a device.

They live in the package (not under tests/) so that the tests, the benchmarks and
``make demo`` start the same rigs; no device module imports them
(tests/core/test_architecture.py holds that).

``broker.py``          a throw-away PKI, mosquitto with the shipped configuration, a TCP cut
``jt808_platform.py``  a reference JT/T 808 platform and a link-cutting proxy
``pulse.py``           a private PulseAudio with a 440 Hz sine source
``power.py``           power_supply trees, an INA219 on a simulated bus, a pisugar-server
``mmcli.py``           ModemManager's ``mmcli`` answering from a scenario file
``nmea.py``            synthetic NMEA logs with recent dates
``drive.py``           synthetic drives in local metres -> fixes or NMEA
``waiting.py``         ``wait_for``: the one way tests and rigs wait for a condition
``demo.py``            ``make demo``

Simulated *sources* a device config can select stay with their part: the synthetic camera
(``agent/capture/sim.py``, ``[video] source = "synthetic:..."``), the replayed GNSS log
(``agent/gps/replay.py``) and the simulated vehicle inputs (``agent/lines/inputs.py``).
"""
