"""Provider id -> adapter class. Routing reads this table; it never branches
on provider names."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.platform.config import Settings
from app.providers.base import ImageProvider, Job
from app.providers.local import LONG_SIDE, LocalProvider
from app.providers.openai_images import DallE3, GptImage
from app.providers.replicate import ReplicateImagen

PROVIDERS: dict[str, type] = {
    cls.id: cls for cls in (ReplicateImagen, DallE3, GptImage, LocalProvider)
}


def get_provider(provider_id: str, settings: Settings, job: Job | None = None) -> ImageProvider:
    """An adapter for one run of the ``generate`` stage (``job``: its saved state)."""
    cls = PROVIDERS[provider_id]
    if cls is LocalProvider:
        return LocalProvider(long_side=max(8, round(LONG_SIDE * settings.local_render_scale)))
    return cls(settings, job=job)


def is_output_url_allowed(settings: Settings, url: str) -> bool:
    """Provider outputs are downloaded only from the adapters' own CDNs
    (``output_hosts``; a leading dot: any subdomain) and the hosts of the
    configured base URLs (a self-hosted gateway or a test fake), the latter
    alone over plain http."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    bases = (settings.replicate_base_url, settings.openai_base_url)
    configured = {h.lower() for b in bases if b and (h := urlsplit(b).hostname)}
    if host in configured:
        return parts.scheme in ("https", "http")
    return parts.scheme == "https" and any(
        host == h or (h.startswith(".") and host.endswith(h))
        for cls in PROVIDERS.values()
        for h in getattr(cls, "output_hosts", ())
    )
