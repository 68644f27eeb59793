"""``bff retry|cancel|delete|feedback|refine ID``: what to do with one
generation after it was submitted, over the HTTP API (``POST
/api/generate/<id>/retry``, ``POST …/cancel``, ``DELETE /api/generate/<id>``,
``POST …/feedback``, ``POST …/assets/<assetId>/refine``), as any client would."""

from __future__ import annotations

import click

from app.cli.client import report, show_assets, wait_for
from app.cli.http import _api, _error, _json


@click.command("retry")
@click.argument("generation_id")
@click.option("--wait", is_flag=True, help="follow the stages and print the image URLs")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
def retry(generation_id: str, wait: bool, timeout: float) -> None:
    """Resume failed generation ID from its first unfinished stage (a provider
    is never paid twice for a stage it finished)."""
    gen = _json("POST", f"/api/generate/{generation_id}/retry", 202)
    # Its first unfinished stage: a fast worker may have it running already.
    done = ("completed", "skipped")
    first = next((s["name"] for s in gen["stages"] if s["status"] not in done), None)
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


@click.command("feedback")
@click.argument("generation_id")
@click.option("--heart", "kind", flag_value="heart", help="you love it (again: take it back)")
@click.option("--outlier", "kind", flag_value="outlier", help="exceptional (again: take it back)")
@click.option("--rating", type=click.IntRange(1, 5), help="1-5")
@click.option("--comment", help="a note")
@click.option("--asset", "asset_id", type=int, help="one image of the generation")
def feedback(
    generation_id: str,
    kind: str | None,
    rating: int | None,
    comment: str | None,
    asset_id: int | None,
) -> None:
    """Tell the optimiser what worked: --heart, --outlier, --rating N (replaces
    your last) or --comment TEXT."""
    given = [k for k, v in (("kind", kind), ("rating", rating), ("comment", comment)) if v]
    if len(given) != 1:  # each is a feedback of its own: the API takes one at a time
        raise click.UsageError("give one of --heart, --outlier, --rating N or --comment TEXT")
    kind = kind or ("rating" if rating is not None else "comment")
    body = {"feedbackType": kind, "rating": rating, "comment": comment, "assetId": asset_id}
    resp = _api(
        "POST",
        f"/api/generate/{generation_id}/feedback",
        json={k: v for k, v in body.items() if v is not None},
    )
    if resp.status_code not in (200, 201):
        raise _error(resp)
    done = "recorded" if resp.status_code == 201 else "withdrew"  # a second heart or outlier
    click.echo(f"{done} {kind} for {generation_id}")


@click.command("refine")
@click.argument("generation_id")
@click.argument("asset_id", type=int)
@click.option("--upscale", type=click.Choice(["2", "4"]), help="upscale the image 2x or 4x")
@click.option("--remove-background", is_flag=True, help="cut it out onto transparency")
@click.option("--wait", is_flag=True, help="follow the refine and print the new image URLs")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
def refine(
    generation_id: str,
    asset_id: int,
    upscale: str | None,
    remove_background: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Make variants of image ASSET_ID of generation ID (both stay stored)."""
    if upscale is None and not remove_background:
        raise click.UsageError("give --upscale 2|4 and/or --remove-background")
    body: dict = {"removeBackground": True} if remove_background else {}
    if upscale:
        body["upscale"] = int(upscale)
    path = f"/api/generate/{generation_id}/assets/{asset_id}/refine"
    before = {a["id"] for a in _json("POST", path, 202, json=body)["assets"]}
    click.echo(f"refining image {asset_id} of {generation_id}")
    if not wait:
        return
    gen = wait_for(generation_id, timeout, only="refine")  # not the stages of before
    stage = next((s for s in gen["stages"] if s["name"] == "refine"), {})
    if stage.get("status") != "completed":
        raise click.ClickException(f"refine {stage.get('status')}: {stage.get('error')}")
    show_assets(gen, only={a["id"] for a in gen["assets"]} - before)  # ids, to refine again


COMMANDS = (retry, cancel, delete, feedback, refine)
