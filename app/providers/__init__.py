"""Image providers: the model catalogue (``catalog``, data: one entry per
model), one adapter per provider API behind one Protocol
(``base.ImageProvider``), and the registry that joins them."""

from app.providers.base import ImageRequest, ProviderRejected, ProviderTransient, unavailable_reason


def __getattr__(name: str):
    # The registry (every adapter, with the OpenAI and Replicate SDKs) loads
    # when first asked for, not with the catalogue's data: the ``bff``
    # command's client side reads the catalogue and calls no provider.
    if name in ("PROVIDERS", "get_provider"):
        from app.providers import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROVIDERS",
    "ImageRequest",
    "ProviderRejected",
    "ProviderTransient",
    "get_provider",
    "unavailable_reason",
]
