"""The ``bff`` commands that talk to a running API over HTTP, as any client
would (``BFF_API_URL``, ``BFF_API_KEY``): ``bff generate`` (live stage progress
from the SSE stream, polling as the fallback) and ``bff generations list|show``."""

from __future__ import annotations

import json
import os
import time

import click
import requests

FINAL = ("completed", "failed", "canceled")


def _api(
    method: str, path: str, extra_headers: dict[str, str] | None = None, **kwargs
) -> requests.Response:
    base = os.environ.get("BFF_API_URL", "http://127.0.0.1:3001").rstrip("/")
    key = os.environ.get("BFF_API_KEY")
    if not key:
        raise click.ClickException("set BFF_API_KEY (from 'bff users create NAME')")
    try:
        return requests.request(
            method,
            base + path,
            timeout=30,
            headers={"Authorization": f"Bearer {key}", **(extra_headers or {})},
            **kwargs,
        )
    except requests.ConnectionError:
        raise click.ClickException(
            f"cannot reach the API at {base} (is 'make dev' running?)"
        ) from None


def _error(resp: requests.Response) -> click.ClickException:
    try:
        err = resp.json()["error"]
        return click.ClickException(f"{resp.status_code} {err['code']}: {err['message']}")
    except Exception:
        return click.ClickException(f"HTTP {resp.status_code}")


@click.command("generate")
@click.argument("prompt")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="garment photo")
@click.option("--provider", default="auto", show_default=True)
@click.option("--size", default="square", show_default=True)
@click.option("--count", default=1, show_default=True)
@click.option("--wait", is_flag=True, help="follow the stages and print the image URLs")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
def generate(
    prompt: str, image: str | None, provider: str, size: str, count: int, wait: bool, timeout: float
) -> None:
    """Submit PROMPT through the HTTP API (BFF_API_URL, BFF_API_KEY)."""
    settings = {"provider": provider, "size": size, "count": count}
    if image:
        with open(image, "rb") as f:
            resp = _api(
                "POST",
                "/api/generate/from-image",
                files={"image": f},
                data={"prompt": prompt, "settings": json.dumps(settings)},
            )
    else:
        resp = _api(
            "POST", "/api/generate/from-prompt", json={"prompt": prompt, "settings": settings}
        )
    if resp.status_code != 202:
        raise _error(resp)
    gen_id = resp.json()["id"]
    click.echo(f"submitted {gen_id}")
    if not wait:
        return
    gen = _follow(gen_id, timeout)
    if gen["status"] != "completed":
        err = gen.get("error") or {}
        raise click.ClickException(f"{gen['status']}: {err.get('stage')}: {err.get('message')}")
    click.echo(f"completed in {gen['provider']} / {gen['model']}, cost ${gen['cost']:.3f}")
    for asset in gen["assets"]:
        click.echo(asset["url"])


def _show_stage(name: str, status: str, duration_ms: int | None) -> None:
    ms = f" ({duration_ms} ms)" if duration_ms is not None else ""
    mark = {"completed": "✓", "skipped": "-", "failed": "✗", "running": "…"}.get(status, " ")
    click.echo(f"  {mark} {name:<9} {status}{ms}")


def _follow(gen_id: str, timeout: float) -> dict:
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
                    if event == "stage":
                        _show_stage(data["stage"], data["status"], data["durationMs"])
                    elif event == "done":
                        return data
                    if time.monotonic() > deadline:
                        raise click.ClickException(f"not finished after {timeout:.0f}s")
    except requests.RequestException:
        pass
    return _poll(gen_id, deadline, timeout)


def _sse_events(resp: requests.Response):
    event, data, event_id = "message", [], None
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, json.loads("\n".join(data)), event_id
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def _poll(gen_id: str, deadline: float, timeout: float) -> dict:
    seen: dict[str, str] = {}
    while True:
        resp = _api("GET", f"/api/generate/{gen_id}")
        if resp.status_code != 200:
            raise _error(resp)
        gen = resp.json()
        for st in gen["stages"]:
            if seen.get(st["name"]) != st["status"] and st["status"] != "pending":
                seen[st["name"]] = st["status"]
                _show_stage(st["name"], st["status"], st["durationMs"])
        if gen["status"] in FINAL:
            return gen
        if time.monotonic() > deadline:
            raise click.ClickException(f"still {gen['status']} after {timeout:.0f}s")
        time.sleep(float(resp.headers.get("Retry-After", 1)) / 2)


generations_cli = click.Group("generations", help="Your generations, over the HTTP API.")


@generations_cli.command("list")
@click.option("--status", default=None, help="only this status")
@click.option("--limit", default=20, show_default=True)
def generations_list(status: str | None, limit: int) -> None:
    """Newest first: id, status, provider, images, prompt."""
    params = {"limit": limit, **({"status": status} if status else {})}
    resp = _api("GET", "/api/generate", params=params)
    if resp.status_code != 200:
        raise _error(resp)
    body = resp.json()
    for gen in body["items"]:
        prompt = (gen["prompt"]["original"] or "(image)").replace("\n", " ")
        click.echo(
            f"{gen['id']}  {gen['status']:<10} {gen['provider'] or '-':<16} "
            f"{len(gen['assets'])} img  {gen['createdAt'][:19]}  {prompt[:50]}"
        )
    if not body["items"]:
        click.echo("no generations")
    elif body["nextCursor"]:
        click.echo(f"(more: the API's ?cursor={body['nextCursor']})")


@generations_cli.command("show")
@click.argument("generation_id")
def generations_show(generation_id: str) -> None:
    """One generation: status, stages with timings, error, image URLs."""
    resp = _api("GET", f"/api/generate/{generation_id}")
    if resp.status_code != 200:
        raise _error(resp)
    gen = resp.json()
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
    for asset in gen["assets"]:
        click.echo(asset["url"])
