"""The values a request's settings take, and what a client reads of a
generation's JSON: shared by the API and the ``bff`` command, whose client
side loads none of the server's libraries (pydantic, SQLAlchemy, redis)."""

from __future__ import annotations

from typing import Any

from app.providers.catalog import CATALOGUE

PROVIDER_CHOICES = ("auto", *CATALOGUE)  # every model of the catalogue, by its id
STRATEGIES = ("balanced", "quality", "cost", "speed")
QUALITIES = ("standard", "hd")
SIZE_CHOICES = ("square", "portrait", "landscape", "1:1", "16:9", "9:16", "4:3", "3:4")


def late_refine_open(gen: dict[str, Any]) -> bool:
    """A completed generation refining an image asked for after the fact:
    its stream goes on until that ends too."""
    return gen["status"] == "completed" and any(
        s["name"] == "refine" and s["status"] in ("pending", "running") for s in gen["stages"]
    )
