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


def output_hosts(settings: Settings) -> tuple[set[str], set[str]]:
    """Hosts provider outputs may be downloaded from: (exact names, dot-suffixes).
    The adapters' own CDNs plus the hosts of the configured base URLs (where a
    self-hosted gateway or a test fake serves its outputs). Nothing else."""
    exact: set[str] = set()
    suffixes: set[str] = set()
    for cls in PROVIDERS.values():
        for host in getattr(cls, "output_hosts", ()):
            (suffixes if host.startswith(".") else exact).add(host.lower())
    for base in (settings.replicate_base_url, settings.openai_base_url):
        if base and (host := urlsplit(base).hostname):
            exact.add(host.lower())
    return exact, suffixes


def is_output_url_allowed(settings: Settings, url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    exact, suffixes = output_hosts(settings)
    configured = {
        (urlsplit(b).hostname or "").lower()
        for b in (settings.replicate_base_url, settings.openai_base_url)
        if b
    }
    # Plain http only for a configured endpoint (a local gateway or fake).
    if parts.scheme != "https" and not (parts.scheme == "http" and host in configured):
        return False
    return host in exact or any(host.endswith(s) for s in suffixes)
