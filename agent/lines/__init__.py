"""The hardware line inputs: buttons, switches and I/O modules on serial ports and GPIO lines.

``serial.py`` serves a line protocol on a serial port (the camera's record button, a
push-to-talk box); ``inputs.py`` reads levels and presses (ignition, brush, SOS) from GPIO
lines, a serial I/O module or a simulated source, debounced in one thread; ``ptt.py`` turns a
serial line or a GPIO line into push-to-talk presses. What a line *means* stays with its part:
the video triggers (agent/capture/triggers.py), the fleet rules (agent/fleet/), talk
(agent/talk/). Importing this package loads nothing heavy (pyserial and gpiod are imported
only when a line is opened).
"""
