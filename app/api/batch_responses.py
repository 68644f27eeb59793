"""The batch answers as pydantic models (``responses`` holds the rest): the
routes' JSON, the completion webhook's payload and the OpenAPI schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, computed_field, model_validator

from app.api.responses import Out, Timestamp
from app.domain.batches import BATCH_STATUSES, BatchView


def batch_path(batch_id: str) -> str:
    return f"/api/batches/{batch_id}"


class BatchLinks(Out):
    self: str
    generations: str = Field(description="the batch's generations, paged")
    archive: str = Field(description="a ZIP of its images and manifest.csv")


class _LinkedBatch(Out):
    id: str

    @computed_field
    @property
    def links(self) -> BatchLinks:
        return BatchLinks(
            self=batch_path(self.id),
            generations=f"/api/generate?batchId={self.id}",
            archive=f"{batch_path(self.id)}/archive",
        )


class BatchAcceptedOut(_LinkedBatch):
    """The 202 answer to a batch (and to its replay)."""

    status: Literal["pending"] = "pending"
    total: int = Field(ge=1, description="how many generations the batch made")
    estimated_cost: float = Field(description="USD at most, as checked against the daily cap")


class BatchCountsOut(Out):
    pending: int
    processing: int
    completed: int
    failed: int
    canceled: int
    deleted: int = Field(description="generations of the batch deleted since (not counted above)")


class BatchOut(_LinkedBatch):
    """A batch as clients see it: the API and its completion webhook."""

    status: Literal[BATCH_STATUSES] = Field(
        description="completed once every generation is final, whatever each outcome; "
        "canceled once a cancel was asked for"
    )
    total: int
    counts: BatchCountsOut
    cost: float = Field(description="USD spent so far")
    estimated_cost: float
    created_at: Timestamp
    finished_at: Timestamp | None = Field(description="when every generation was final")
    webhook_url: str | None

    @model_validator(mode="before")
    @classmethod
    def _from_view(cls, data: Any) -> Any:
        if not isinstance(data, BatchView):
            return data
        gone = data.batch.total - sum(data.counts.values())  # deleted one by one since
        counts = {**data.counts, "deleted": max(0, gone)}
        derived = {"status": data.status, "counts": counts, "cost": data.cost}
        return {f: derived[f] if f in derived else getattr(data.batch, f) for f in cls.model_fields}


class BatchPage(Out):
    items: list[BatchOut]
    next_cursor: str | None


def batch_json(batch: BatchView) -> dict[str, Any]:
    """The batch's JSON as a dict (the completion webhook's payload)."""
    return BatchOut.model_validate(batch).model_dump(mode="json", by_alias=True)
