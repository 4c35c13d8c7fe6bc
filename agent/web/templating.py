"""The review page's templates (``agent/web/templates/``): Jinja2 with autoescape on, so every
value a page shows is escaped unless a template says otherwise (none does).

Jinja2 is a platform-side dependency (the ``platform`` extra): the device page never imports
this module. Templates get plain values and small dataclasses from the page builders
(:mod:`agent.web.review_pages`, :mod:`agent.web.review_svg`); the filters below turn times,
sizes and coordinates into text and never raise for a value out of range.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from agent.web import fmt


def _f1(v: float) -> str:
    return f"{v:.1f}"


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("agent.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        utc=fmt.fmt_utc,
        hms=fmt.hms,
        age=fmt.age,
        size=fmt.size,
        local_input=fmt.local_input,
        f1=_f1,
    )
    return env


class Templates:
    """Renders one template to the bytes of a response."""

    def __init__(self) -> None:
        self.env = make_environment()

    def render(self, name: str, **context: Any) -> bytes:
        return self.env.get_template(name).render(**context).encode()
