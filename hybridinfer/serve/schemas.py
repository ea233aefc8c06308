"""The request bodies of the OpenAI endpoints, as pydantic models, what they mean for the sampler, and why a
body is refused (`RequestError`, answered with 400 and the field at fault).

Fields OpenAI's clients send and hybridinfer does not use (`user`, `metadata`, `parallel_tool_calls`, ...) are
ignored, as OpenAI's server ignores unknown ones; a known field of the wrong type is refused (strict types: no
"1" for 1, no true for 1). Absent and null fields take their defaults. Features the engine lacks (`n` > 1,
`best_of`, `suffix`, `tools`, ...) are refused with a message by `refusal()`, never silently dropped, and so is a
value out of its range (`logprobs` above MAX_LOGPROBS, a `logit_bias` id outside the vocabulary: checked by the
app, which knows the vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import HybridInferError
from ..generation.sampling import SamplerSettings
from .logprobs import MAX_LOGPROBS
from .openai_sampling import OPENAI_SAMPLING  # noqa: F401  (re-exported: what an unset field gets)

MAX_STOP_STRINGS = 16  # OpenAI allows 4; lm-eval's local-completions sends a task's stop strings and the EOS
LOGIT_BIAS_RANGE = (-100.0, 100.0)  # as OpenAI's; -100 bans the token

_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed",
                    "frequency_penalty", "presence_penalty")
_FLAG_FIELDS = {"--temp": "temperature", "--top-k": "top_k", "--top-p": "top_p", "--min-p": "min_p",
                "--repeat-penalty": "repeat_penalty", "--repeat-last-n": "repeat_last_n", "-s/--seed": "seed",
                "--frequency-penalty": "frequency_penalty", "--presence-penalty": "presence_penalty"}

# How a field whose type is a union is described when a request gets it wrong (pydantic names each member).
UNION_TYPES = {"prompt": "a string, a list of token ids, or a list of prompts (strings or lists of token ids)",
               "stop": f"a string or a list of up to {MAX_STOP_STRINGS} strings",
               "content": "a string or a list of text parts"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|dict|list)$|\[|^[A-Z]")  # pydantic's names of union members


class RequestError(HybridInferError):
    """A request the server refuses with 400: `param` names the field at fault, `code` is OpenAI's error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


Body = TypeVar("Body", bound="_Body")


def parse_request(raw: bytes, model: type[Body]) -> Body:
    """`raw` JSON as `model`; RequestError for malformed JSON, a wrong type or an unsupported feature."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    where = lone_surrogate(data)
    if where is not None:
        raise RequestError(f"'{where}' holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), "
                           "which is not text: send valid Unicode", param=where)
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(exc.errors()) from None
    refused = body.refusal()
    if refused is not None:
        raise RequestError(refused[1], param=refused[0])
    return body


def lone_surrogate(data) -> str | None:
    """The path ("messages.0.content") of the first string of parsed JSON `data`, or object key, holding a lone
    surrogate, else None. `json.loads` joins an escaped pair ("\\ud83d\\ude00") into one character, so any
    surrogate left is alone: not Unicode, and no tokenizer or UTF-8 encoder takes it."""
    pending = [("", data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                where = f"{path}.{key}" if path else key
                if not key.isascii() and _SURROGATE.search(key):  # named with the escape, as UTF-8 cannot hold it
                    return where.encode("utf-8", "backslashreplace").decode()
                pending.append((where, item))
        elif isinstance(value, list):
            pending.extend((f"{path}.{i}", item) for i, item in reversed(list(enumerate(value)))
                           if isinstance(item, (str, list, dict)))
    return None


def invalid_fields(errors: list[dict]) -> RequestError:
    """The error for pydantic's `errors()`: the first field at fault, named by its path ("messages.0.content")."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return RequestError("the request body is not valid JSON")
    loc = [part for part in first.get("loc", ()) if not (isinstance(part, str) and _UNION_TAG.search(part))]
    path = ".".join(str(part) for part in loc)
    name = next((part for part in reversed(loc) if isinstance(part, str)), None)
    same_field = [e for e in errors if e.get("loc", ())[:1] == first.get("loc", ())[:1]]
    if name in UNION_TYPES and len(same_field) > 1 and first.get("type") != "missing":
        return RequestError(f"'{path}' must be {UNION_TYPES[name]}", param=path)
    if path:
        return RequestError(f"'{path}': {first.get('msg', 'invalid value')}", param=path)
    return RequestError(f"the request body: {first.get('msg', 'invalid value')}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    def refusal(self) -> tuple[str, str] | None:
        """(field, message) for the first thing the server refuses in this body, else None."""
        return None


class _Request(_Body):
    """Fields both endpoints share: sampling (llama.cpp's extras top_k, min_p, repeat_penalty too), stop, stream,
    logit_bias."""

    model: str | None = None  # ignored: the server has one model
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    ignore_eos: bool | None = None  # llama.cpp's extension: end-of-text tokens are never sampled (benchmarks)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias added to its logit

    def sampling(self, defaults: SamplerSettings) -> SamplerSettings:
        """`defaults` with the fields this request gives; raises RequestError naming the field at fault."""
        given = {name: getattr(self, name) for name in _SAMPLING_FIELDS if getattr(self, name) is not None}
        try:
            return dataclasses.replace(defaults, **given)
        except HybridInferError as exc:
            message, field = str(exc), None
            for flag, name in _FLAG_FIELDS.items():
                if f"invalid {flag} " in message:
                    message, field = message.replace(f"invalid {flag} ", f"invalid {name} "), name
                    break
            raise RequestError(message, param=field) from None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def token_bias(self, n_vocab: int) -> dict[int, float] | None:
        """`logit_bias` by token id (-100 as -inf: a ban); RequestError for an id that is not one of the
        vocabulary's or a bias outside -100..100."""
        if not self.logit_bias:
            return None
        bias = {}
        low, high = LOGIT_BIAS_RANGE
        for key, value in self.logit_bias.items():
            if not re.fullmatch(r"[0-9]{1,12}", key) or int(key) >= n_vocab:
                raise RequestError(f"logit_bias key {key!r} is not a token id: give ids from 0 to {n_vocab - 1} "
                                   "(as strings)", param="logit_bias")
            if not (math.isfinite(value) and low <= value <= high):
                raise RequestError(f"logit_bias for token {key} is {value}: it must be between {low:g} and "
                                   f"{high:g} (-100 bans the token)", param="logit_bias")
            bias[int(key)] = -math.inf if value == low else value
        if len([v for v in bias.values() if v == -math.inf]) >= n_vocab:
            raise RequestError("logit_bias bans every token of the vocabulary", param="logit_bias")
        return bias

    def refusal(self) -> tuple[str, str] | None:
        if self.n not in (None, 1):
            return "n", "only n=1 is supported: send one request per completion"
        return None


def _logprobs_range(field: str, value: int | None) -> tuple[str, str] | None:
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        return field, f"{field} must be from 0 to {MAX_LOGPROBS}, got {value}"
    return None


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: (str | list[int] | Annotated[list[str], Field(min_length=1)]
             | Annotated[list[list[int]], Field(min_length=1)])
    max_tokens: Annotated[int, Field(ge=-1)] | None = None  # None: 16, as OpenAI's default
    logprobs: int | None = None  # alternatives per token, 0..MAX_LOGPROBS; the chosen token's logprob always
    echo: bool | None = None  # the answer starts with the prompt (and its tokens' logprobs)
    add_special_tokens: bool | None = None  # vLLM's extension; false: no BOS added to the prompt (default true)
    best_of: int | None = None
    suffix: str | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: each its own choice."""
        if isinstance(self.prompt, str) or not self.prompt or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def refusal(self) -> tuple[str, str] | None:
        if self.best_of not in (None, 1):
            return "best_of", "only best_of=1 is supported"
        if self.suffix:
            return "suffix", "suffix (fill-in-the-middle) is not supported"
        return _logprobs_range("logprobs", self.logprobs) or super().refusal()


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str | None:
        """The content as one string (its text parts joined, as llama.cpp's server does)."""
        if not isinstance(self.content, list):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    @property
    def text_only(self) -> bool:
        return not isinstance(self.content, list) or all(part.type == "text" for part in self.content)


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=-1)] | None = None  # None: until end of text or the context is full
    max_completion_tokens: Annotated[int, Field(ge=-1)] | None = None  # OpenAI's newer name; wins if both
    logprobs: bool | None = None
    top_logprobs: int | None = None  # alternatives per token, 0..MAX_LOGPROBS (needs logprobs)
    tools: list[dict] | None = None
    functions: list[dict] | None = None  # the deprecated form of tools
    response_format: dict | None = None

    @property
    def token_limit(self) -> int:
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return -1 if limit is None else limit

    @property
    def n_logprobs(self) -> int | None:
        """Alternatives per token when logprobs are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def refusal(self) -> tuple[str, str] | None:
        if self.tools or self.functions:
            return ("tools" if self.tools else "functions"), "tools (function calling) are not supported"
        if not all(message.text_only for message in self.messages):
            return "messages", "only text content parts are supported (no images, audio or files)"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only response_format {\"type\": \"text\"} is supported"
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        return _logprobs_range("top_logprobs", self.top_logprobs) or super().refusal()


class TokenizeRequest(_Body):
    """POST /tokenize (vLLM's shape): a text `prompt`, or chat `messages` rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # prompt: BOS as the model says unless false; messages: default false
    add_generation_prompt: bool | None = None  # messages: default true
    return_token_strs: bool | None = None

    def refusal(self) -> tuple[str, str] | None:
        if (self.prompt is None) == (self.messages is None):
            return "prompt", "give either prompt (a string) or messages (a chat)"
        if self.messages is not None and not all(message.text_only for message in self.messages):
            return "messages", "only text content parts are supported (no images, audio or files)"
        return None


class DetokenizeRequest(_Body):
    """POST /detokenize (vLLM's shape)."""

    model: str | None = None
    tokens: list[int]
