"""A batch's request body (``POST /api/batches``): a list of ordinary
submissions, or a matrix expanded server side. Validated like every body
(``schemas``): unknown fields refused, no coercion."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.api.common import MAX_JSON_ENTRIES
from app.api.errors import ApiError, validation_details
from app.api.schemas import (
    MAX_PROMPT,
    B,
    GenerationSettings,
    PersonaId,
    PromptSubmit,
    SpecSubmit,
    WebhookUrl,
    _Body,
    parse,
    text,
    words,
)
from app.domain import batch_text
from app.domain.choices import PROVIDER_CHOICES, SIZE_CHOICES

MAX_BATCH = 100


def _item_kind(item: Any) -> str:
    spec = isinstance(item, SpecSubmit) or (isinstance(item, dict) and "vltSpec" in item)
    return "image" if spec else "prompt"


def _item(item: Any) -> PromptSubmit | SpecSubmit:
    """One item, validated as its own route would: a refusal names the item's
    field (``items.3.settings.provider``), not the union's branch as well."""
    if isinstance(item, PromptSubmit | SpecSubmit):
        return item
    return parse(SpecSubmit if _item_kind(item) == "image" else PromptSubmit, item)


_ITEM_KINDS = Annotated[
    Annotated[PromptSubmit, Tag("prompt")] | Annotated[SpecSubmit, Tag("image")],
    Discriminator(_item_kind),
]
# One generation of a batch: what from-prompt accepts, or (with a vltSpec)
# what from-image accepts as JSON. The document shows the union.
BatchItem = Annotated[_ITEM_KINDS, PlainValidator(_item, json_schema_input_type=_ITEM_KINDS)]


def _prompts_or_text(schema: dict[str, Any]) -> None:
    """In the document: exactly one of ``prompts`` and ``promptsText``, and
    each axis' values once (``_each_once``)."""
    schema["oneOf"] = [{"required": ["prompts"]}, {"required": ["promptsText"]}]
    schema["properties"]["prompts"].pop("default", None)
    for axis in ("prompts", "providers", "personas", "sizes", "colorways"):
        schema["properties"][axis]["uniqueItems"] = True


MAX_TEXT = MAX_BATCH * MAX_PROMPT
MAX_MATRIX_PROMPT = MAX_PROMPT - 80  # room for the longest colorway suffix


def _text_prompts(text: str) -> list[str]:
    """The prompts of ``promptsText``, each as ``prompts`` would take it;
    ValueError saying the line that is not."""
    # As a list has at most 1,000 entries: counted in C, before each line is read in Python.
    count = len(batch_text.NEWLINE.findall(text.rstrip("\r\n"))) + 1
    if count > MAX_JSON_ENTRIES:
        raise ValueError(
            f"has {count} lines; at most {MAX_JSON_ENTRIES}, notes and blank lines included"
        )
    try:
        lines = batch_text.prompts(text)
    except batch_text.BatchTextError as exc:
        raise ValueError(str(exc)) from None
    if not lines:
        raise ValueError("has no prompts: only blank lines and notes (#)")
    if len(lines) > MAX_BATCH:
        raise ValueError(f"has {len(lines)} prompts; at most {MAX_BATCH}")
    for n, prompt in lines:
        if "\x00" in prompt:
            raise ValueError(f"line {n} holds a NUL character")
        if len(prompt) > MAX_MATRIX_PROMPT:
            raise ValueError(
                f"line {n} has {len(prompt)} characters; a matrix's prompt"
                f" has at most {MAX_MATRIX_PROMPT} (room for a colourway)"
            )
    return [prompt for _, prompt in lines]


class BatchMatrix(_Body):
    """Every combination of ``prompts`` with each list given, expanded in this
    order (prompts outermost); at most 100 combinations."""

    model_config = ConfigDict(json_schema_extra=_prompts_or_text)

    # Room for the longest colorway suffix: every combination is a valid prompt.
    prompts: list[words(MAX_MATRIX_PROMPT)] = Field(None, min_length=1, max_length=MAX_BATCH)  # type: ignore[assignment]
    promptsText: str | None = Field(
        None,
        max_length=MAX_TEXT,
        description="instead of prompts: the text of a .txt batch file, one prompt a line"
        " (blank lines and lines starting with # left out; a prompt twice refused; at most"
        " 1,000 lines), as the web page's Batch box sends it",
    )
    providers: list[Literal[PROVIDER_CHOICES]] | None = Field(None, min_length=1, max_length=5)
    personas: list[PersonaId] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    sizes: list[Literal[SIZE_CHOICES]] | None = Field(None, min_length=1, max_length=8)
    colorways: list[words(60)] | None = Field(
        None,
        min_length=1,
        max_length=MAX_BATCH,
        description='each appended to the prompt: "<prompt>, in a <colorway> colorway"',
    )
    negativePrompt: text(MAX_PROMPT) | None = None
    settings: GenerationSettings = Field(
        default_factory=GenerationSettings, description="for every combination"
    )

    def size(self) -> int:
        n = len(self.prompts)
        for axis in (self.providers, self.personas, self.sizes, self.colorways):
            n *= len(axis or [None])
        return n

    @field_validator("prompts", "providers", "personas", "sizes", "colorways")
    @classmethod
    def _each_once(cls, values: list[str] | None) -> list[str] | None:
        """An axis' value twice makes every combination with it twice: paid
        twice for what was typed once (``navy, navy`` in the page's Colourways)."""
        seen: set[str] = set()
        for value in values or []:
            key = batch_text.request_key(value)  # as a text's prompts: case and spacing aside
            if key in seen:
                raise ValueError(
                    f"holds {value!r} twice: each combination with it would be made, and"
                    " paid, twice; list each once"
                )
            seen.add(key)
        return values

    @model_validator(mode="before")
    @classmethod
    def _text_to_prompts(cls, data: Any) -> Any:
        """``promptsText`` read as ``bff batch`` reads a .txt file (``batch_text``)."""
        if not isinstance(data, dict) or data.get("promptsText") is None:
            return data
        text = data["promptsText"]
        if "prompts" in data:
            raise ValueError("send either prompts or promptsText")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            return data  # the field's own check says what is wrong
        try:
            return data | {"prompts": _text_prompts(text)}
        except ValueError:
            return data  # said by _readable, at matrix.promptsText

    @field_validator("promptsText")
    @classmethod
    def _readable(cls, text: str | None, info: ValidationInfo) -> str | None:
        """A mistake in the text, said at ``matrix.promptsText`` by its line
        (not at ``matrix``, nor at ``matrix.prompts.1``: no place in the text).
        Read again only when ``_text_to_prompts`` could not read it."""
        if text is not None and info.data.get("prompts") is None:
            _text_prompts(text)
        return text

    @model_validator(mode="after")
    def _at_most(self) -> BatchMatrix:
        if self.prompts is None:
            raise ValueError("send prompts (a list) or promptsText (one prompt a line)")
        if self.size() > MAX_BATCH:
            raise ValueError(f"makes {self.size()} combinations; at most {MAX_BATCH}")
        return self


def _one_of_items_or_matrix(schema: dict[str, Any]) -> None:
    """In the document: exactly one of the two, neither of them null."""
    schema["oneOf"] = [{"required": ["items"]}, {"required": ["matrix"]}]
    for name in ("items", "matrix"):
        schema["properties"][name].pop("default", None)


class BatchSubmit(_Body):
    """``items`` or a ``matrix``, not both."""

    model_config = ConfigDict(json_schema_extra=_one_of_items_or_matrix)

    # Not nullable: the document's oneOf counts a field sent as null as sent.
    items: list[BatchItem] = Field(None, min_length=1, max_length=MAX_BATCH)  # type: ignore[assignment]
    matrix: BatchMatrix = Field(None)  # type: ignore[assignment]
    webhookUrl: WebhookUrl | None = Field(None, description="the batch's completion is POSTed here")

    @model_validator(mode="after")
    def _one_form(self) -> BatchSubmit:
        if (self.items is None) == (self.matrix is None):
            raise ValueError("send either items or matrix")
        return self


# A matrix's lists: prompts, providers, personas, sizes, colorways.
AXES = tuple(
    name
    for name in BatchMatrix.model_fields
    if name not in ("negativePrompt", "settings", "promptsText")
)


def parse_or_hint(model: type[B], data: Any) -> B:
    """``parse``; a refused body holding a matrix's axes outside ``matrix``
    (sent to from-prompt, or to /api/batches unwrapped) says where they go."""
    try:
        return parse(model, data)
    except ValidationError as exc:
        axes = [name for name in AXES if isinstance(data, dict) and name in data]
        if "prompts" not in axes or "matrix" in data:
            raise
        hint = (
            f"request validation failed: this looks like a batch matrix ({', '.join(axes)}):"
            ' a matrix goes to POST /api/batches as {"matrix": {"prompts": [...], ...}}'
        )
        raise ApiError(422, "validation_error", hint, validation_details(exc)) from None
