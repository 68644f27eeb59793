"""``bff refine ID ASSET_ID [--upscale 2|4] [--remove-background] [--wait]``:
upscale and/or cut out one image of a completed generation, over the HTTP
API (``POST /api/generate/<id>/assets/<assetId>/refine``)."""

from __future__ import annotations

import click

from app.cli.client import _json, wait_for


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
    for asset in gen["assets"]:
        if asset["id"] not in before:
            click.echo(f"{asset['variant']:<9} {asset['width']}x{asset['height']}  {asset['url']}")


COMMANDS = (refine,)
