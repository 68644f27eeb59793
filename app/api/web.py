"""GET /: the designer's page (a template plus static JS/CSS, no build step).
It holds no secrets: the user pastes an API key, kept in localStorage and sent
as ``Authorization: Bearer`` by ``fetch()``; the page itself needs no key."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from flask import Blueprint, render_template

from app.api.schemas import SIZE_CHOICES, GenerationSettings
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
    fields = GenerationSettings.model_fields
    return render_template(
        "index.html",
        stages=STAGES,
        providers=get_args(fields["provider"].annotation),
        qualities=get_args(fields["quality"].annotation),
        strategies=get_args(fields["strategy"].annotation),
        sizes=[s for s in SIZE_CHOICES if s != "1:1"],  # "1:1" is "square"
    )
