"""Every price we pay comes from one table of data: ``prices.toml`` beside
this module (each row with its source and the date it was checked), with
the rows of ``BFF_PRICES_FILE`` laid over it when an operator sets one. The
adapters' ``price_for``, routing's cost score and the ``generate`` stage's
cost read it; nothing hard-codes a price. A generation's ``generate`` output
names the table its cost came from."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

BUILTIN = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True)
class Price:
    provider: str
    model: str
    size: str  # as sent to the provider, or "*"
    quality: str  # as sent to the provider, or "*"
    usd: float
    unit: str
    source: str
    checked: date


@dataclass(frozen=True)
class PriceTable:
    name: str  # which table: "builtin 2026-12-06", or the override file's path over it
    rows: dict[tuple[str, str, str], Price]

    def price(self, provider: str, quality: str, size: str = "*") -> Price:
        for key in ((size, quality), (size, "*"), ("*", quality), ("*", "*")):
            if (provider, *key) in self.rows:
                return self.rows[(provider, *key)]
        raise KeyError(f"no price for {provider} {size} {quality} in {self.name}")


def _rows(path: Path) -> dict[tuple[str, str, str], Price]:
    """The file's ``[[price]]`` rows; a ValueError saying what is wrong (an
    OSError: no such file)."""
    rows = tomllib.loads(path.read_text("utf-8")).get("price")
    if not isinstance(rows, list):
        raise ValueError("it has no [[price]] rows")
    try:
        prices = [Price(**r) for r in rows]
    except TypeError as exc:  # a row with other fields than prices.toml's
        raise ValueError(f"a [[price]] row is not one of prices.toml's: {exc}") from None
    for p in prices:  # (a dataclass checks no types: usd = "0.04" failed in a stage)
        if isinstance(p.usd, bool) or not isinstance(p.usd, int | float) or not p.usd >= 0:
            raise ValueError(f"the {p.provider} row's usd is {p.usd!r}, not a number 0 or more")
    return {(p.provider, p.size, p.quality): p for p in prices}


def checked(path: str) -> str:
    """``BFF_PRICES_FILE``, read at start: a file that is missing or does
    not parse stops every process in one line, not in a stage. Not kept
    (``_table``'s cache): gunicorn's master checks it too, and the workers
    it forks on a HUP must read the file as it is then."""
    _rows(Path(path))
    return path


@lru_cache(maxsize=4)
def _table(override: str | None) -> PriceTable:
    rows = _rows(BUILTIN)
    name = f"builtin {max(p.checked for p in rows.values())}"
    if override:
        rows = {**rows, **_rows(Path(override))}
        name = f"{override} over {name}"
    return PriceTable(name, rows)


_override: str | None = None


def configure(prices_file: str | None) -> None:
    """The operator's file (``BFF_PRICES_FILE``), set once when the app is made."""
    global _override
    _table(prices_file)  # (checked already by the settings: ``checked``)
    _override = prices_file


def table() -> PriceTable:
    return _table(_override)


def price(provider_id: str, quality: str, size: str = "*") -> float:
    """USD for one image."""
    return table().price(provider_id, quality, size).usd
