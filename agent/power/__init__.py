"""The device's power: battery charge, external power, voltage, and the firmware's
under-voltage flags, from the source the config names, with the low / critical actions."""
