"""Every price we pay, per image, in one table (USD). Adapters' ``price_for``
and the ``generate`` stage's ``gen.cost`` read it; nothing else hard-codes a
price.

- Imagen 4 Ultra (Replicate): one price per output image; our ``hd`` tier is
  billed at the higher rate.
- DALL-E 3: by size and quality (``standard``/``hd``).
- gpt-image-1: OpenAI's published per-image prices by quality and size; our
  ``standard`` maps to ``medium`` and ``hd`` to ``high`` (see ``openai_images``).
"""

from __future__ import annotations

PRICES: dict[tuple[str, str, str], float] = {
    # (provider, size or "*", quality as sent) -> USD per image
    ("google-imagen", "*", "standard"): 0.04,
    ("google-imagen", "*", "hd"): 0.048,
    ("openai-dalle3", "1024x1024", "standard"): 0.04,
    ("openai-dalle3", "1024x1024", "hd"): 0.08,
    ("openai-dalle3", "1792x1024", "standard"): 0.08,
    ("openai-dalle3", "1792x1024", "hd"): 0.12,
    ("openai-dalle3", "1024x1792", "standard"): 0.08,
    ("openai-dalle3", "1024x1792", "hd"): 0.12,
    ("openai-gpt-image", "1024x1024", "low"): 0.011,
    ("openai-gpt-image", "1536x1024", "low"): 0.016,
    ("openai-gpt-image", "1024x1536", "low"): 0.016,
    ("openai-gpt-image", "1024x1024", "medium"): 0.042,
    ("openai-gpt-image", "1536x1024", "medium"): 0.063,
    ("openai-gpt-image", "1024x1536", "medium"): 0.063,
    ("openai-gpt-image", "1024x1024", "high"): 0.167,
    ("openai-gpt-image", "1536x1024", "high"): 0.25,
    ("openai-gpt-image", "1024x1536", "high"): 0.25,
}


def price(provider_id: str, quality: str, size: str = "*") -> float:
    """USD for one image. ``local`` (and any provider we do not pay) is free."""
    if provider_id == "local":
        return 0.0
    for key in ((provider_id, size, quality), (provider_id, "*", quality)):
        if key in PRICES:
            return PRICES[key]
    raise KeyError(f"no price for {provider_id} {size} {quality}")
