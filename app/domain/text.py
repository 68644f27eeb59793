"""Text the database can store, checked where it comes in (a request body,
a supplied VLT spec, a vision model's answer): PostgreSQL's ``text`` holds
no NUL, so one is the client's 422 naming its field, not a database error
later. The pattern says the same in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

NO_NUL = "^[^\\u0000]*$"


def no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def storable(max_length: int | None = None) -> Any:
    """A string type of at most ``max_length`` characters, without NUL."""
    limits = Field(max_length=max_length, json_schema_extra={"pattern": NO_NUL})
    return Annotated[str, limits, AfterValidator(no_nul)]
