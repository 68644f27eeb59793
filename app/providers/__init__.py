"""Image providers: the model catalogue (``catalog``, data: one entry per
model), one adapter per provider API behind one Protocol
(``base.ImageProvider``), and the registry that joins them."""

from app.providers.base import (
    ImageOutput,
    ImageProvider,
    ImageRequest,
    ProviderError,
    ProviderRejected,
    ProviderResult,
    ProviderTransient,
    ProviderUnavailable,
    unavailable_reason,
)
from app.providers.registry import PROVIDERS, get_provider

__all__ = [
    "PROVIDERS",
    "ImageOutput",
    "ImageProvider",
    "ImageRequest",
    "ProviderError",
    "ProviderRejected",
    "ProviderResult",
    "ProviderTransient",
    "ProviderUnavailable",
    "get_provider",
    "unavailable_reason",
]
