"""Model id -> catalogue entry (``PROVIDERS``), and provider API -> adapter
(``ADAPTERS``). Routing reads the entries; it never branches on model names,
and no model has an adapter class of its own."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from app.platform.config import Settings
from app.providers.base import ImageProvider, Job
from app.providers.catalog import CATALOGUE, ModelEntry
from app.providers.local import LONG_SIDE, LocalProvider
from app.providers.openai_images import OpenAIImages
from app.providers.replicate import ReplicateModel

# The live table (tests swap entries in and out of it like any dict).
PROVIDERS: dict[str, ModelEntry] = dict(CATALOGUE)


def _local(entry: ModelEntry, settings: Settings, job: Job | None) -> ImageProvider:
    return LocalProvider(long_side=max(8, round(LONG_SIDE * settings.local_render_scale)))


ADAPTERS: dict[str, Callable[[ModelEntry, Settings, Job | None], ImageProvider]] = {
    "replicate-official": ReplicateModel,
    "replicate-versioned": ReplicateModel,
    "openai-images": OpenAIImages,
    "local": _local,
}


def get_provider(provider_id: str, settings: Settings, job: Job | None = None) -> ImageProvider:
    """An adapter for one run of the ``generate`` stage (``job``: its saved state)."""
    entry = PROVIDERS[provider_id]
    return ADAPTERS[entry.api](entry, settings, job)


def verify_key(provider_id: str, settings: Settings) -> str:
    """A free call that proves the entry's key works (``bff providers check``)."""
    entry = PROVIDERS[provider_id]
    if entry.api == "openai-images":
        return OpenAIImages.verify_key(settings, entry.model)
    return ReplicateModel.verify_key(settings)


def is_output_url_allowed(settings: Settings, url: str) -> bool:
    """Provider outputs are downloaded only from the catalogue's own CDNs
    (``output_hosts``; a leading dot: any subdomain) and the hosts of the
    configured base URLs (a self-hosted gateway or a test fake), the latter
    alone over plain http. The host checked must be the host called: a URL
    that urllib and the HTTP client read differently (a backslash, user
    info: ``https://10.0.0.1\\@replicate.delivery/``) is refused."""
    try:
        parts, called = urlsplit(url), parse_url(url).host
    except (ValueError, LocationParseError):
        return False
    host = (parts.hostname or "").lower()
    if "\\" in url or "@" in parts.netloc or (called or "").strip("[]").lower() != host:
        return False
    bases = (settings.replicate_base_url, settings.openai_base_url)
    configured = {h.lower() for b in bases if b and (h := urlsplit(b).hostname)}
    if host in configured:
        return parts.scheme in ("https", "http")
    return parts.scheme == "https" and any(
        host == h or (h.startswith(".") and host.endswith(h))
        for entry in PROVIDERS.values()
        for h in getattr(entry, "output_hosts", ())
    )
