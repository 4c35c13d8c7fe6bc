"""Fleet operations: work areas, routes, vehicle inputs and the alarms decided on the device.

See docs/fleet.md. Importing this package imports nothing beyond the standard library and the
agent's own modules (no numpy, no gpiod).
"""
