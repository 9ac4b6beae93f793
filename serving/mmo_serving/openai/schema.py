"""OpenAI-compatible request/response models and the JSON error the API answers with.

Pure: pydantic only (no ray, no torch), so the CLI and tests can import it cheaply.

Every bad request becomes an :class:`ApiError`, rendered as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request the API refuses, with the HTTP status and the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _loc_to_param(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content", 1, "image_url")`` -> ``messages[0].content[1].image_url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic puts union-member tags ("str", "list[...]", "type=text") into the path;
    # keep only the parts that are real field names or list indices.
    return tuple(
        p
        for p in loc
        if isinstance(p, int) or (p.isidentifier() and p not in _TYPE_TAGS and not p[0].isupper())
    )


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def validation_error(exc: ValidationError) -> ApiError:
    """The most specific schema error (the deepest field path), as a 400.

    With a union such as ``content: str | list[part]`` pydantic reports one error per
    member; the deepest one is the one about what the client actually sent.
    """
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(_clean_loc(tuple(e["loc"]))))
    param = _loc_to_param(_clean_loc(tuple(first["loc"])))
    msg = f"{param or 'body'}: {first['msg']}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error(s))"
    return ApiError(400, msg, code="invalid_schema", param=param or None)


def _lone_surrogate(data: Any) -> bool:
    """Whether the parsed JSON holds a lone UTF-16 surrogate (``"\\ud800"`` without
    its pair): JSON allows the escape, but it is no Unicode text."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json_body(raw: bytes) -> Any:
    if not raw:
        raise ApiError(400, "request body is empty: expected a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise ApiError(
            400, "request body is not valid JSON: nested too deeply", code="invalid_json"
        ) from None
    if (b"\\ud" in raw or b"\\uD" in raw) and _lone_surrogate(data):
        raise ApiError(
            400,
            "request body is not valid Unicode: a \\u escape of a lone UTF-16 surrogate "
            "(\\ud800-\\udfff without its pair)",
            code="invalid_json",
        )
    return data


def parse_model(cls: type[BaseModel], raw: bytes) -> Any:
    """Parse a request body into ``cls``; every failure becomes an :class:`ApiError`."""
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise ApiError(
            400,
            f"request body must be a JSON object, got {type(data).__name__}",
            code="invalid_schema",
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


# ---------------------------------------------------------------------------- requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    # OpenAI clients send many optional fields (user, seed, logprobs...): accept and
    # ignore the ones we do not act on rather than failing real clients.
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Strict):
    url: str = Field(min_length=1, description="data:image/...;base64,... (inline only)")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={kind}" if kind in ("text", "image_url") else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("type=text")] | Annotated[ImagePart, Tag("type=image_url")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_content_part",
        custom_error_message="content part 'type' must be 'text' or 'image_url'",
    ),
]


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]


class ChatCompletionRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    n: Literal[1] = 1

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingInputPart(_Strict):
    """An image (or text) embedding input: ``{"type": "image_url", "image_url": {...}}``."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


EmbeddingItem = str | EmbeddingInputPart


class EmbeddingRequest(_Lenient):
    model: str = Field(min_length=1)
    input: EmbeddingItem | list[EmbeddingItem]
    encoding_format: Literal["float", "base64"] = "float"

    def items(self) -> list[EmbeddingItem]:
        items = self.input if isinstance(self.input, list) else [self.input]
        if not items:
            raise ApiError(400, "input: must not be empty", code="invalid_schema", param="input")
        return items


# ---------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mmo"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
