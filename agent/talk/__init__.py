"""Push-to-talk voice between officers and the control room, over the uplink's MQTT link.

``wire`` (pure: topics, chunks, signatures, reassembly, receipts), ``codec`` (Ogg Opus with
PyAV, tones), ``audio_io`` (sounddevice input/output), ``device`` (the device's service),
``platform`` (control-room sender and listener), ``cli`` (``edge-agent talk ...``); the serial
and GPIO press-to-talk buttons are agent/lines/ptt.py. See docs/talk.md. Importing this
package loads nothing heavy (no numpy, sounddevice or PyAV).
"""
