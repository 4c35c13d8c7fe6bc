"""A JT/T 808-2019 terminal: the optional second uplink of the tracker and dashcam profiles.

Sealed evidence keeps going to our own platform over MQTT; positions, alarms and the
vehicle's work state also go to a city's existing JT/T 808 platform. See docs/jt808.md.

======================  =====================================================================
``body.py``             byte reader/writer, BCD, GBK strings, GMT+8 times (pure)
``codec.py``            the frame: 0x7e/0x7d, BCC, 2019/2013 headers, sub-packages, the
                        stream reader that resynchronises on 0x7e (pure)
``messages.py``         message bodies: encode and decode every supported message (pure)
``describe.py``         any frame as JSON (``edge-agent jt808 decode``) (pure)
``location.py``         the agent's state -> alarm and status bits, additional items (pure)
``params.py``           terminal parameters 0x0001, 0x0020-0x0030 <-> the reporting strategy
``areas.py``            0x8600-0x8607 <-> the fleet plan store
``queue.py``            store and forward: unacknowledged reports, durable and encrypted
``client.py``           the TCP (optional TLS) session: register, authenticate, heartbeat,
                        live reports, batches of the backlog, platform messages
``terminal.py``         the terminal as the agent sees it (on_fix, on_alarm, health)
``settings.py``         ``[jt808]``
======================  =====================================================================

The reference platform and a link-cutting proxy (tests, demo, bench) are in
``agent/labs/jt808_platform.py``.
"""
