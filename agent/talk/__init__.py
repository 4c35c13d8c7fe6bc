"""Push-to-talk voice between officers and the control room, over the uplink's MQTT link.

``wire`` (pure: topics, chunks, signatures, reassembly, receipts), ``codec`` (Ogg Opus with
PyAV, tones), ``audio_io`` (sounddevice input/output), ``device`` (the device's service),
``buttons`` (serial and GPIO press-to-talk), ``platform`` (control-room sender and listener),
``commands`` (``edge-agent talk ...``). See docs/talk.md. Importing this package loads
nothing heavy (no numpy, sounddevice or PyAV).
"""
