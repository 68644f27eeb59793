"""The image-provider interface, its request/result types and its errors.

Error tree (each adapter maps its vendor's errors here, once)::

    ProviderError
    ├── ProviderTransient   retry with backoff (429, 5xx, timeouts); retry_after
    ├── ProviderRejected    fail the job with the provider's reason (policy, auth)
    └── ProviderUnavailable not configured (missing key): fail, naming the variable

    ProviderPending         not an error: the provider is still working, or a
                            rate-limit token is not free yet; call again later
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app.platform.config import Settings

if TYPE_CHECKING:
    from app.domain.spend import TooLate

ASPECT_RATIOS = ("1:1", "3:4", "4:3", "16:9", "9:16")
# The image types taken and made, by content type: their file extension.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {ext: ct for ct, ext in EXTENSIONS.items()} | {"jpeg": "image/jpeg"}


class ProviderError(Exception):
    pass


class ProviderTransient(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    pass


class ProviderUnavailable(ProviderError):
    pass


class ProviderPending(Exception):
    """Nothing wrong, not done: call ``generate`` again in ``retry_in`` seconds.
    ``state``: what to merge into the job's saved state with the wait (e.g. a
    reserved rate-limit token), kept for the next run."""

    def __init__(self, retry_in: float, reason: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.retry_in = retry_in
        self.reason = reason
        self.state = state or {}


def _no_wait() -> None:
    return None


def prediction_ids(state: dict[str, Any] | None) -> list[str]:
    """The Replicate predictions a saved state (a stage's checkpoint) holds:
    generate's a list, refine's a mapping of task to id."""
    ids = (state or {}).get("predictions") or []
    return list(ids.values()) if isinstance(ids, dict) else list(ids)


@dataclass
class Job:
    """What a remote adapter needs besides the request, so a call can span
    several runs of the stage without paying twice:

    - ``state``: what an earlier run saved (e.g. prediction ids), else {};
    - ``save(update)``: durably merge ``update`` into ``state`` now, before
      waiting on anything that costs money;
    - ``acquire()``: take a global rate-limit token before each paid call
      (raises ``ProviderPending`` when none is free);
    - ``poll_every``: seconds between looks at work still running at the
      provider (each look is one run of the stage; no run sleeps);
    - ``paid(key, prediction)``: a prediction was read as succeeded, so it is
      paid for: recorded at once (once, however often it is read), whatever
      becomes of the others (one failing, a cancel, a timeout).
    """

    state: dict[str, Any] = field(default_factory=dict)
    saver: Callable[[dict[str, Any]], None] | None = None
    acquire: Callable[[], None] = _no_wait
    poll_every: float = 2.0
    paid: Callable[[str, dict[str, Any]], None] = lambda _key, _prediction: None

    def save(self, update: dict[str, Any]) -> None:
        self.state = {**self.state, **copy.deepcopy(update)}  # a snapshot, not aliases
        if self.saver is not None:
            self.saver(self.state)


@dataclass(frozen=True)
class Capabilities:
    aspect_ratios: tuple[str, ...]
    negative_prompt: bool
    max_prompt_length: int
    max_images: int
    quality_score: float  # 0..1, editorial judgement of output quality
    typical_latency_s: float
    styles: tuple[str, ...] = ()  # settings.style values it takes (DALL-E 3)
    safety_levels: tuple[str, ...] = ()  # settings.safetyLevel values it takes (Imagen)
    reference_images: bool = False  # takes the uploaded photo itself (settings.reference=image)
    qualities: tuple[str, ...] = ("standard", "hd")  # settings.quality values it tells apart


@dataclass(frozen=True)
class Reference:
    """A reference image for models that take one: the designer's own upload."""

    data: bytes
    content_type: str = "image/png"


@dataclass
class ImageRequest:
    generation_id: str
    prompt: str
    negative_prompt: str = ""
    aspect_ratio: str = "1:1"
    quality: str = "standard"
    count: int = 1
    palette: list[str] = field(default_factory=list)
    garment_type: str | None = None
    pattern: str | None = None
    style: str = "natural"  # DALL-E 3: natural (photographic) or vivid
    safety_level: str = "block_only_high"  # Imagen's safety_filter_level
    references: list[Reference] = field(default_factory=list)  # settings.reference=image


@dataclass
class ImageOutput:
    """One produced image: bytes in hand, or a URL for ``store`` to fetch."""

    data: bytes | None = None
    url: str | None = None
    content_type: str = "image/png"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProviderResult:
    outputs: list[ImageOutput]
    sent: dict[str, Any] = field(default_factory=dict)  # what was actually sent
    meta: dict[str, Any] = field(default_factory=dict)


class ImageProvider(Protocol):
    """One adapter per provider API, made for one catalogue entry
    (``registry.get_provider``); it answers for the entry's id and model."""

    id: str
    model: str
    key_env_var: str | None
    capabilities: Capabilities

    def price_for(self, request: ImageRequest) -> float:
        """USD for one image of this request (the price table lives in ``pricing``)."""
        ...

    def generate(self, request: ImageRequest) -> ProviderResult:
        """Remote adapters take a ``Job`` in their constructor (``get_provider``)."""
        ...


def unavailable_reason(provider_id: str, settings: Settings) -> str | None:
    """Why a provider cannot be used with these settings, or None if it can."""
    from app.providers.registry import PROVIDERS

    entry = PROVIDERS.get(provider_id)
    if entry is None:
        return f"unknown provider {provider_id!r}"
    if entry.key_env_var and not settings.key_for(entry.key_env_var):
        return f"{entry.key_env_var} not configured"
    return None


SIZE_ALIASES = {"square": "1:1", "portrait": "3:4", "landscape": "4:3"}


def aspect_ratio_of(size: str) -> str:
    """Our ``settings.size`` (a name or a ratio) as an aspect ratio."""
    return SIZE_ALIASES.get(size, size)


@dataclass
class Canceled:
    """What a cancel of a generation's predictions found."""

    late: list[TooLate] = field(default_factory=list)  # made already: paid, to record
    unanswered: list[str] = field(default_factory=list)  # Replicate did not answer: ask again

    def __add__(self, other: Canceled) -> Canceled:
        return Canceled(self.late + other.late, self.unanswered + other.unanswered)


def output_urls(output: Any) -> list[str]:
    """The image URLs of a prediction's ``output`` (one, or a list)."""
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [u for u in output if isinstance(u, str)]
    return []
