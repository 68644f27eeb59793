"""``bff retry|cancel|delete ID``: what to do with one generation after it was
submitted, over the HTTP API (``POST /api/generate/<id>/retry``,
``POST …/cancel``, ``DELETE /api/generate/<id>``), as any client would."""

from __future__ import annotations

import click

from app.cli.client import _api, _error, _json, report, wait_for


@click.command("retry")
@click.argument("generation_id")
@click.option("--wait", is_flag=True, help="follow the stages and print the image URLs")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
def retry(generation_id: str, wait: bool, timeout: float) -> None:
    """Resume failed generation ID from its first unfinished stage (a provider
    is never paid twice for a stage it finished)."""
    gen = _json("POST", f"/api/generate/{generation_id}/retry", 202)
    first = next((s["name"] for s in gen["stages"] if s["status"] == "pending"), None)
    click.echo(f"retrying {generation_id}" + (f" from {first}" if first else ""))
    if wait:
        report(wait_for(generation_id, timeout))


@click.command("cancel")
@click.argument("generation_id")
def cancel(generation_id: str) -> None:
    """Stop generation ID while it is pending or processing (kept, as canceled)."""
    gen = _json("POST", f"/api/generate/{generation_id}/cancel")
    click.echo(f"{gen['status']} {generation_id}")


@click.command("delete")
@click.argument("generation_id")
def delete(generation_id: str) -> None:
    """Delete generation ID and its stored images (canceling it if it runs)."""
    resp = _api("DELETE", f"/api/generate/{generation_id}")
    if resp.status_code != 204:
        raise _error(resp)
    click.echo(f"deleted {generation_id}")


COMMANDS = (retry, cancel, delete)
