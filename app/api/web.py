"""GET /: the designer's page (a template plus static JS/CSS, no build step).
It holds no secrets: the user pastes an API key, kept in localStorage and sent
as ``Authorization: Bearer`` by ``fetch()``; the page itself needs no key."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, render_template

from app.domain.choices import PROVIDER_CHOICES, QUALITIES, SIZE_CHOICES, STRATEGIES
from app.pipeline import STAGES

WEB = Path(__file__).resolve().parent.parent / "web"

bp = Blueprint(
    "web",
    __name__,
    template_folder=str(WEB / "templates"),
    static_folder=str(WEB / "static"),
    static_url_path="/assets",  # /static is the app's own (empty) static route
)


@bp.get("/")
def index():
    return render_template(
        "index.html",
        stages=STAGES,
        providers=PROVIDER_CHOICES,
        qualities=QUALITIES,
        strategies=STRATEGIES,
        sizes=[s for s in SIZE_CHOICES if s != "1:1"],  # "1:1" is "square"
    )
