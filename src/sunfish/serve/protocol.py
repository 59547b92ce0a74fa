"""The OpenAI wire format: request bodies (strict: unknown fields and wrong types are errors), the error shape,
and the response and stream-chunk bodies. See docs/serving.md."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "request_too_large", 429: "rate_limit_error", 503: "service_unavailable", 500: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[ContentPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Common(_Strict):
    """Fields both endpoints take."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    sunfish: dict[str, Any] | None = None  # sampler fields and stream_canvas

    def neutral_or_refuse(self) -> None:
        """OpenAI fields Sunfish does not implement are accepted only at their neutral values."""
        unsupported = {"presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                       "logit_bias": self.logit_bias or None, **self._unsupported()}
        for name, value in unsupported.items():
            if value not in (None, 0, False) and not (name == "best_of" and value == 1):
                raise ApiError(400, f"{name} is not supported by Sunfish's samplers; leave it out", param=name)

    def _unsupported(self) -> dict:
        return {}

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop takes at most 4 strings", param="stop")
        return [s for s in stops if s]


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def _unsupported(self) -> dict:
        return {"logprobs": self.logprobs, "best_of": self.best_of, "suffix": self.suffix or None}

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise ApiError(400, "prompt is an empty list; give at least one prompt", param="prompt")
        return prompts


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def _unsupported(self) -> dict:
        return {"logprobs": self.logprobs, "top_logprobs": self.top_logprobs}

    def conversation(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def parse(kind: type[_Common], raw: bytes) -> _Common:
    """The request body as `kind`, or a 400 naming the first problem."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        request = kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = "unknown field; see docs/serving.md for the fields Sunfish takes" \
            if first["type"] == "extra_forbidden" else first["msg"]
        raise ApiError(400, f"{where}: {message}", param=where or None) from None
    request.neutral_or_refuse()
    return request


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str, choices: list, **extra) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def sse(body: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)}\n\n".encode()
