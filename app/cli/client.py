"""The ``bff`` commands that talk to a running API over HTTP, as any client
would (``BFF_API_URL``, ``BFF_API_KEY``; the calls: ``http``): ``generate``
(live stage progress from the SSE stream, polling as the fallback) and
``generations``; and the waiting the other client commands (``jobs``,
``batches``) share."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path

import click
import requests

from app.cli.http import FINAL, _api, _error, _json, body_of, persona_ids
from app.domain.choices import (
    PROVIDER_CHOICES,
    QUALITIES,
    SIZE_CHOICES,
    STRATEGIES,
    late_refine_open,
)


def _choice(values: tuple[str, ...]) -> click.Choice:
    return click.Choice(values, case_sensitive=False)


@click.command("generate")
@click.argument("prompt", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="garment photo")
@click.option("--negative", help="what the image must not show")
@click.option("--persona", "persona_id", help="one of your personas: its name or id")
@click.option("--provider", type=_choice(PROVIDER_CHOICES), default="auto", show_default=True)
@click.option("--strategy", type=_choice(STRATEGIES), default="balanced", show_default=True)
@click.option("--quality", type=_choice(QUALITIES), default="standard", show_default=True)
@click.option("--size", type=_choice(SIZE_CHOICES), default="square", show_default=True)
@click.option("--count", type=click.IntRange(1, 4), default=1, show_default=True)
@click.option(
    "--enhance",
    type=_choice(("auto", "off")),
    default="auto",
    show_default=True,
    help="off: the prompt goes to the provider as written",
)
@click.option(
    "--reference",
    type=_choice(("describe", "image")),
    default=None,
    help="with --image: describe (the photo in words, the default) or image "
    "(the photo itself goes to a model that takes reference images)",
)
@click.option("--wait", is_flag=True, help="follow the stages and print the image URLs")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
def generate(
    prompt: str | None,
    image: str | None,
    negative: str | None,
    persona_id: str | None,
    wait: bool,
    timeout: float,
    **settings: str | int,
) -> None:
    """Submit PROMPT, or a garment photo (--image, PROMPT then optional),
    through the HTTP API (BFF_API_URL, BFF_API_KEY)."""
    if not (prompt or "").strip():
        if not image:
            raise click.UsageError("give a PROMPT, or a garment photo with --image PATH")
        prompt = None  # the photo alone
    if persona_id:
        persona_id = persona_ids([persona_id]).get(persona_id, persona_id)
    body = {"prompt": prompt, "negativePrompt": negative, "personaId": persona_id}
    body = {k: v for k, v in body.items() if v is not None}
    settings = {k: v for k, v in settings.items() if v is not None}  # unset: the API's default
    if image:
        upload = {"image": (Path(image).name, Path(image).read_bytes())}
        form = {**body, "settings": json.dumps(settings)}
        gen_id = _json("POST", "/api/generate/from-image", 202, files=upload, data=form)["id"]
    else:
        body = {**body, "settings": settings}
        gen_id = _json("POST", "/api/generate/from-prompt", 202, json=body)["id"]
    click.echo(f"submitted {gen_id}")
    if not wait:
        return
    report(wait_for(gen_id, timeout))


def wait_for(gen_id: str, timeout: float, only: str | None = None) -> dict:
    """The generation once final, its stages (``only`` that one) shown as they
    change. Ctrl-C stops only the waiting: one line says how to look later."""
    try:
        return _follow(gen_id, timeout, only)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; {gen_id} goes on: bff generations show {gen_id}", err=True)
        raise click.exceptions.Exit(130) from None  # 128 + SIGINT, as a shell reports it


def report(gen: dict) -> None:
    """A waited-for generation: its images, or why it has none (as an error)."""
    if gen["status"] != "completed":
        err = gen.get("error")
        said = f"{gen['status']} at {err['stage']}: {err['message']}" if err else gen["status"]
        if gen["status"] == "failed":
            said += f" (resume it: bff retry {gen['id']})"
        raise click.ClickException(said)
    click.echo(f"completed in {gen['provider']} / {gen['model']}, cost ${gen['cost']:.3f}")
    show_assets(gen)


def show_assets(gen: dict, only: Collection[int] | None = None) -> None:
    """Each image (or those of ids ``only``): its id (for ``bff refine``), a
    variant's kind, source image and size, then its URL alone on the next line
    (scripts take the lines that are URLs)."""
    for asset in gen["assets"]:
        if only is not None and asset["id"] not in only:
            continue
        variant = ""
        if asset.get("variant", "original") != "original":
            variant = f" {asset['variant']} from {asset['sourceAssetId']}"
            variant += f", {asset['width']}x{asset['height']}"
        click.echo(f"asset {asset['id']}{variant}:")
        click.echo(asset["url"])


def _show_stage(name: str, status: str, duration_ms: int | None) -> None:
    ms = f" ({duration_ms} ms)" if duration_ms is not None else ""
    mark = {"completed": "✓", "skipped": "-", "failed": "✗", "running": "…"}.get(status, " ")
    click.echo(f"  {mark} {name:<9} {status}{ms}")


def _follow(gen_id: str, timeout: float, only: str | None = None) -> dict:
    """Live stage progress from the SSE stream; polling if streaming fails."""
    deadline = time.monotonic() + timeout
    last_id = None
    try:
        for _ in range(3):  # reconnect (resuming with Last-Event-ID) after a drop
            extra = {"Last-Event-ID": last_id} if last_id else {}
            with _api(
                "GET", f"/api/generate/{gen_id}/events", stream=True, extra_headers=extra
            ) as resp:
                if resp.status_code != 200:
                    break
                for event, data, event_id in _sse_events(resp):
                    last_id = event_id or last_id
                    if event == "stage" and only in (None, data["stage"]):
                        _show_stage(data["stage"], data["status"], data["durationMs"])
                    elif event == "done":
                        return data
                    if time.monotonic() > deadline:  # also on keepalives: nothing may change
                        raise click.ClickException(f"not finished after {timeout:.0f}s")
    except requests.RequestException:
        pass
    return _poll(gen_id, deadline, timeout, only)


def _sse_events(resp: requests.Response):
    """(event, data, id) of each event of our stream (one ``data`` line each);
    a keepalive comment is ``(None, None, None)``."""
    fields: dict[str, str] = {}
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith(":"):
            yield None, None, None
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if "data" in fields:
            yield fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
        fields = {}


def _poll(gen_id: str, deadline: float, timeout: float, only: str | None = None) -> dict:
    seen: dict[str, str] = {}
    while True:
        resp = _api("GET", f"/api/generate/{gen_id}")
        if resp.status_code != 200:
            raise _error(resp)
        gen = body_of(resp)
        for st in gen["stages"]:
            shown = only in (None, st["name"]) and st["status"] != "pending"
            if shown and seen.get(st["name"]) != st["status"]:
                seen[st["name"]] = st["status"]
                _show_stage(st["name"], st["status"], st["durationMs"])
        if gen["status"] in FINAL and not late_refine_open(gen):
            return gen
        if time.monotonic() > deadline:
            raise click.ClickException(f"still {gen['status']} after {timeout:.0f}s")
        time.sleep(float(resp.headers.get("Retry-After", 1)) / 2)


generations_cli = click.Group("generations", help="Your generations, over the HTTP API.")


@generations_cli.command("list")
@click.option("--status", type=_choice(FINAL + ("pending", "processing")), help="only this status")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="the page after this one (printed at the end of a page)")
@click.option("--all", "every", is_flag=True, help="every page, not just one")
def generations_list(status: str | None, limit: int, cursor: str | None, every: bool) -> None:
    """Newest first: id, status, provider, images, prompt."""
    shown = 0
    while True:
        params = {"limit": limit, "status": status, "cursor": cursor}
        body = _json("GET", "/api/generate", params={k: v for k, v in params.items() if v})
        for gen in body["items"]:
            prompt = (gen["prompt"]["original"] or "(image)").replace("\n", " ")
            click.echo(
                f"{gen['id']}  {gen['status']:<10} {gen['provider'] or '-':<16} "
                f"{len(gen['assets'])} img  {gen['createdAt'][:19]}  {prompt[:50]}"
            )
        shown += len(body["items"])
        cursor = body["nextCursor"]
        if not (every and cursor):
            break
    if not shown:
        click.echo("no generations")
    elif cursor:
        click.echo(f"(more: --cursor {cursor}, or --all)")


@generations_cli.command("show")
@click.argument("generation_id")
def generations_show(generation_id: str) -> None:
    """One generation: status, stages with timings, error, image ids and URLs."""
    gen = _json("GET", f"/api/generate/{generation_id}")
    click.echo(f"{gen['id']}  {gen['status']}  ({gen['mode']}, created {gen['createdAt']})")
    if gen["provider"]:
        click.echo(f"provider: {gen['provider']} / {gen['model']}, cost ${gen['cost']:.3f}")
    click.echo(f"prompt:   {gen['prompt']['original'] or '(image)'}")
    if gen["prompt"]["final"]:
        click.echo(f"final:    {gen['prompt']['final']}")
    for st in gen["stages"]:
        _show_stage(st["name"], st["status"], st["durationMs"])
    if gen["error"]:
        click.echo(f"error in {gen['error']['stage']}: {gen['error']['message']}")
    show_assets(gen)


COMMANDS = (generate, generations_cli)
