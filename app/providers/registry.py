"""Provider id -> adapter class. Routing reads this table; it never branches
on provider names."""

from __future__ import annotations

from ..config import Settings
from .base import ImageProvider
from .local import LONG_SIDE, LocalProvider

PROVIDERS: dict[str, type] = {
    LocalProvider.id: LocalProvider,
}


def get_provider(provider_id: str, settings: Settings) -> ImageProvider:
    cls = PROVIDERS[provider_id]
    if cls is LocalProvider:
        return LocalProvider(long_side=max(8, round(LONG_SIDE * settings.local_render_scale)))
    return cls(settings)
