"""HTML that escapes by default, without a dependency (the device page runs on the device).

One rule: text becomes HTML only through :func:`html`, which fills a template written in the
code with values that are escaped unless they are already :class:`Markup` (the result of
another :func:`html` call). No value is escaped by hand, so none can be forgotten::

    html("<p class=bad>{msg}</p>", msg=message)           # message escaped
    html("<ul>{items}</ul>", items=join(html("<li>{x}</li>", x=x) for x in xs))

Format specs apply to the value before it is escaped (``{n:.1f}``). The platform's review page
uses Jinja2 with autoescape instead (:mod:`agent.web.templating`); both end in the same
``Markup`` type (Jinja2's ``markupsafe.Markup`` is a ``str`` too).
"""

from __future__ import annotations

import html as _html
import string
from collections.abc import Iterable
from typing import Any


class Markup(str):
    """A string that is HTML already: inserted as it is by :func:`html`."""

    __slots__ = ()


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(_html.escape(str(value), quote=True))


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup) and not format_spec:
            return value
        return escape(format(value, format_spec))


_FORMATTER = _Escaping()


def html(template: str, /, **values: object) -> Markup:
    """``template`` (trusted: written in the code) with its ``{name}`` fields escaped."""
    return Markup(_FORMATTER.vformat(template, (), values))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    """Several pieces as one: each escaped unless it is Markup already."""
    return Markup(escape(sep).join(escape(p) for p in parts))
