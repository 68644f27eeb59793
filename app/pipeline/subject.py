"""What a designer asks for: the garment, its colours, materials, pattern and
construction (cut, length, neckline, sleeves, fastening, collar).

``subject_of`` reads them from words; ``resolve`` merges the words with a
photo's analysis (the words win wherever they name one). ``strays`` and
``conflicts`` keep learnt terms, persona keywords and an LLM's phrases from
overriding the request (docs/judgement.md).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from app.pipeline.colors import named_in

# Garment words -> the category the ``local`` renderer draws. A suit (jacket
# over trousers) reads as one shoulders-to-ankles shape, like a jumpsuit.
_CATEGORIES: dict[str, str] = {
    "dress": "dress gown frock sundress kaftan caftan sari saree cheongsam qipao",
    "skirt": "skirt miniskirt kilt sarong",
    "trousers": "trouser trousers pant pants jeans shorts slacks chinos culottes joggers "
    "leggings sweatpants",
    "top": "top shirt blouse tee t-shirt tank camisole cami sweater jumper cardigan hoodie "
    "sweatshirt vest waistcoat corset bustier bodysuit tunic polo turtleneck",
    "jacket": "jacket blazer coat overcoat peacoat trench trenchcoat parka anorak cape "
    "kimono poncho gilet",
    "jumpsuit": "jumpsuit romper playsuit boilersuit catsuit overalls dungarees suit "
    "tuxedo pantsuit",
}
GARMENTS: dict[str, str] = {w: cat for cat, ws in _CATEGORIES.items() for w in ws.split()}
PLURAL_ONLY = {w for w in GARMENTS if w.endswith("s") and w[:-1] not in GARMENTS}
MATERIALS = frozenset(
    """silk satin velvet velour wool cashmere merino mohair alpaca angora tweed boucle
    cotton linen denim chambray leather suede lace chiffon tulle organza taffeta crepe
    georgette charmeuse voile muslin gauze jersey knit crochet corduroy flannel fleece
    canvas twill gabardine poplin seersucker brocade jacquard damask sequin sequins
    sequined lurex mesh neoprene vinyl latex pvc nylon polyester spandex lycra rayon
    viscose fur shearling sheepskin""".split()
)
PATTERNS: dict[str, str] = {
    **dict.fromkeys("striped stripes stripe pinstripe pinstriped".split(), "striped"),
    **dict.fromkeys("checked checks gingham plaid tartan houndstooth".split(), "checked"),
    **dict.fromkeys("floral florals paisley".split(), "floral"),
    **dict.fromkeys("dotted polka-dot spotted".split(), "polka dot"),
    **dict.fromkeys("print printed leopard zebra camouflage camo".split(), "print"),
}
# How the garment is made: its cut, length, neckline, sleeves, fastening and
# collar, by kind (two of one kind contradict each other; of two kinds, not).
# Part of what is asked for, like the garment itself: a learnt "double
# breasted" has no place on a t-shirt. A space here also matches a hyphen
# ("v-neck"); a hyphen only a hyphen ("a-line", not "a line of models").
_DETAILS: dict[str, str] = {
    "length": "floor length|ankle length|knee length|calf length|tea length|hip length|"
    "full length|mid length|midi|maxi|mini|cropped|longline|long line",
    "neckline": "v neck|crew neck|crewneck|scoop neck|boat neck|square neck|cowl neck|"
    "high neck|mock neck|sweetheart neckline|halter neck|halterneck|halter|off shoulder|"
    "off the shoulder|one shoulder|strapless|plunging neckline",
    "sleeves": "long sleeve|short sleeve|sleeveless|cap sleeve|puff sleeve|"
    "puffed sleeve|bishop sleeve|bell sleeve|three quarter sleeve|raglan sleeve",
    "fastening": "double breasted|single breasted|button down|button up|button front|"
    "zip front|wrap front|lace up|drawstring waist|belted",
    "collar": "peak lapel|peaked lapel|notch lapel|notched lapel|shawl collar|"
    "mandarin collar|peter pan collar|spread collar",
    "fit": "a-line|bodycon|oversized|slim fit|relaxed fit|boxy|flared|wide leg|straight leg|"
    "skinny|high waisted|high waist|empire waist|drop waist|mermaid|pleated",
}
DETAILS: dict[str, str] = {  # phrase, hyphens as spaces -> kind
    phrase.replace("-", " "): kind
    for kind, phrases in _DETAILS.items()
    for phrase in phrases.split("|")
}

# Words that end a garment phrase: "a silk blouse with wide trousers" is a blouse.
_CLAUSE = re.compile(r",|;|\b(?:with|and|over|under|plus|paired|worn|&)\b")


def _word_re(words: list[str], plural: bool) -> re.Pattern[str]:
    alts = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    suffix = "(?:e?s)?" if plural else ""
    # Hyphens join words ("top-notch", "a-line"), so they do not end one here.
    return re.compile(rf"(?<![a-z-])({alts}){suffix}(?![a-z-])")


_GARMENT_RE = _word_re([w for w in GARMENTS if w not in PLURAL_ONLY], plural=True)
_PLURAL_RE = _word_re(sorted(PLURAL_ONLY), plural=False)
_MATERIAL_RE = _word_re(sorted(MATERIALS), plural=False)
_PATTERN_RE = _word_re([*PATTERNS, "polka dot"], plural=True)
_DETAIL_RE = re.compile(
    r"(?<![a-z-])("
    + "|".join(
        sorted(
            (
                re.escape(p).replace(r"\ ", "[ -]")
                for ps in _DETAILS.values()
                for p in ps.split("|")
            ),
            key=len,
            reverse=True,
        )
    )
    + r")s?(?![a-z-])"
)


def details_in(text: str) -> list[str]:
    """The construction details named in ``text``, as listed: "Double-Breasted,
    long sleeves" -> "double breasted", "long sleeve"."""
    low = text.lower()
    return list(dict.fromkeys(m.group(1).replace("-", " ") for m in _DETAIL_RE.finditer(low)))


def garment_category(word: str | None) -> str | None:
    """The renderer's category for a garment word or phrase ("silk blouse" -> top)."""
    found = garments_in(word or "")
    return GARMENTS[found[-1]] if found else None


def garments_in(text: str) -> list[str]:
    """Garment words named in ``text``, in order, singular as listed."""
    low = text.lower()
    hits = [(m.start(), m.group(1)) for m in _GARMENT_RE.finditer(low)]
    hits += [(m.start(), m.group(1)) for m in _PLURAL_RE.finditer(low)]
    return [w for _, w in sorted(hits)]


def head_garment(text: str) -> str | None:
    """The garment the text is about: the last garment word of the first
    clause that names one ("dress shirt" -> shirt, "shirt dress" -> dress)."""
    for clause in _CLAUSE.split(text.lower()):
        found = garments_in(clause)
        if found:
            return found[-1]
    return None


@dataclass(frozen=True)
class Subject:
    garments: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    details: tuple[str, ...] = ()  # construction: cut, length, neckline, ... (DETAILS)

    @property
    def categories(self) -> set[str]:
        return {GARMENTS[g] for g in self.garments}

    def __bool__(self) -> bool:
        return bool(
            self.garments or self.colours or self.materials or self.patterns or self.details
        )


def subject_of(text: str) -> Subject:
    low = text.lower()
    return Subject(
        garments=tuple(dict.fromkeys(garments_in(low))),
        colours=tuple(named_in(low)),
        materials=tuple(dict.fromkeys(m.group(1) for m in _MATERIAL_RE.finditer(low))),
        patterns=tuple(
            dict.fromkeys(PATTERNS.get(m.group(1), "polka dot") for m in _PATTERN_RE.finditer(low))
        ),
        details=tuple(details_in(low)),
    )


def _kinds(term: Subject, request: Subject) -> list[tuple[tuple[str, ...], list[str]]]:
    """Per kind: what the request names, and the words of ``term`` it does not."""
    kinds = [
        (request.garments, [g for g in term.garments if GARMENTS[g] not in request.categories]),
        (request.colours, [c for c in term.colours if c not in request.colours]),
        (request.materials, [m for m in term.materials if m not in request.materials]),
        (request.patterns, [p for p in term.patterns if p not in request.patterns]),
    ]
    for kind in _DETAILS:
        named = tuple(d for d in request.details if DETAILS[d] == kind)
        kinds.append((named, [d for d in term.details if DETAILS[d] == kind and d not in named]))
    return kinds


def strays(term: str, request: Subject) -> list[str]:
    """Garment, colour, material, pattern and construction words of ``term``
    the request does not name (a learnt term with any is never added)."""
    return [w for _, ws in _kinds(subject_of(term), request) for w in ws]


def conflicts(term: str, words: Subject) -> list[str]:
    """Words of ``term`` that contradict the designer's: a garment, colour,
    material, pattern or construction detail (a length, a neckline, ...) of a
    kind the designer named, but not the one named."""
    return [w for named, ws in _kinds(subject_of(term), words) if named for w in ws]


@dataclass
class Resolved:
    """The designer's words merged with a photo's analysis."""

    record: dict[str, Any] | None  # the spec record minus what the words override
    garment: str | None = None
    colours: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)
    pattern: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> "words" | "photo"
    overridden: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "garment": self.garment,
            "colours": self.colours,
            "materials": self.materials,
            "pattern": self.pattern,
            "from": self.sources,
        }


def _photo(record: dict[str, Any]) -> dict[str, Any]:
    colors, fabric = record.get("colors") or {}, record.get("fabric") or {}
    garment = record.get("garmentType")
    material = fabric.get("type")
    return {
        "garment": garment if garment and garment != "garment" else None,
        "colours": [c for c in (colors.get("primary"), colors.get("secondary")) if c],
        "materials": [material] if material and material != "unspecified" else [],
        "pattern": colors.get("pattern"),
    }


def resolve(words: str | None, record: dict[str, Any] | None) -> Resolved:
    """Where the words name a garment, colour, material or pattern they win;
    the photo's analysis (``record``) fills in the rest."""
    said = subject_of(words or "")
    head = head_garment(words or "")
    photo = _photo(record or {})
    rec = copy.deepcopy(record) if record else None
    out = Resolved(record=rec)
    wins = {
        "garment": head,
        "colours": list(said.colours),
        "materials": list(said.materials),
        "pattern": said.patterns[0] if said.patterns else None,
    }
    for name, value in wins.items():
        if value:
            out.sources[name] = "words"
            if photo[name]:
                out.overridden.append(
                    {"field": name, "photo": _text(photo[name]), "words": _text(value)}
                )
        elif photo[name]:
            out.sources[name], value = "photo", photo[name]
        setattr(out, name, value)
    if rec is not None:
        _strip(rec, wins, photo)
    return out


def _text(value: Any) -> str:
    return " and ".join(value) if isinstance(value, list) else str(value)


def _strip(rec: dict[str, Any], wins: dict[str, Any], photo: dict[str, Any]) -> None:
    """Remove from the record what the words already say (or contradict)."""
    if wins["garment"]:
        if photo["garment"] and garment_category(photo["garment"]) != garment_category(
            wins["garment"]
        ):
            # Another garment altogether: its cut and construction do not carry over.
            rec["silhouette"], rec["construction"] = None, {}
        rec["garmentType"] = wins["garment"]  # the designer's word for it
    colors = rec.setdefault("colors", {})
    if wins["colours"]:
        colors["primary"] = colors["secondary"] = None
    if wins["pattern"]:
        colors["pattern"] = None
    if wins["materials"]:
        rec.setdefault("fabric", {})["type"] = None
