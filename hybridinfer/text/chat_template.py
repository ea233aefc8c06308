"""Chat formatting: the GGUF's `tokenizer.chat_template` (Jinja, as in HF's tokenizer_config.json) or a
built-in format (llama.cpp's names: "chatml", "llama2", "minicpm").

Jinja templates render the way transformers' `apply_chat_template` renders them: an immutable sandbox with
`trim_blocks` / `lstrip_blocks`, the `loopcontrols` extension, a no-op `{% generation %}` block, HF's `tojson`
(no HTML escaping), `raise_exception(msg)` and `strftime_now(fmt)`. Unlike the plain jinja sandbox, access to
an unsafe attribute (`''.__class__`, ...) fails instead of rendering as empty. A template is untrusted input:
it renders under the time, size and depth limits of `chat_template_limits`. Every template failure, a broken
limit included, becomes a one-line `HybridInferError` that suggests `--chat-template NAME`.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Callable

import jinja2
import jinja2.ext
from jinja2 import nodes

from . import chat_template_limits as limits
from ..errors import HybridInferError

ChatFormatter = Callable[..., str]  # (messages, *, bos_token, eos_token, add_generation_prompt) -> str


# ----------------------------------------------------------------------------------------------------------
# Built-in formats (llama.cpp's llm_chat_apply_template equivalents)


def _text(content: Any) -> str:
    """Message content as text: a string, None, or OpenAI-style parts [{"type": "text", "text": ...}, ...]."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part)
            for part in content
            if not isinstance(part, dict) or part.get("type", "text") == "text"
        )
    return str(content)


def _chatml(
    messages: list[dict], *, bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True
) -> str:
    out = [f"<|im_start|>{m['role']}\n{_text(m.get('content'))}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _llama2(
    messages: list[dict], *, bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True
) -> str:
    """Meta's Llama-2 chat format: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>`.

    System messages are folded into the next user turn; contents are stripped (as Meta's template does).
    The prompt already ends with `[/INST]`, so `add_generation_prompt` adds nothing.
    """
    out: list[str] = []
    system: list[str] = []
    for m in messages:
        role, content = m["role"], _text(m.get("content")).strip()
        if role == "system":
            system.append(content)
        elif role == "user":
            prefix = f"<<SYS>>\n{chr(10).join(system)}\n<</SYS>>\n\n" if system else ""
            system = []
            out.append(f"{bos_token}[INST] {prefix}{content} [/INST]")
        else:  # assistant (or anything else the model said)
            out.append(f" {content} {eos_token}")
    if system:  # a trailing system message with no user turn after it
        out.append(f"{bos_token}[INST] <<SYS>>\n{chr(10).join(system)}\n<</SYS>>\n\n [/INST]")
    return "".join(out)


def _minicpm(
    messages: list[dict], *, bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True
) -> str:
    """MiniCPM: `<用户>{user}<AI>{assistant}` (contents stripped; a system message is plain text), as llama.cpp."""
    out: list[str] = []
    for m in messages:
        content = _text(m.get("content")).strip()
        out.append(f"<用户>{content}<AI>" if m["role"] == "user" else content)
    return "".join(out)


BUILTIN_TEMPLATES: dict[str, ChatFormatter] = {
    "chatml": _chatml,
    "llama2": _llama2,
    "minicpm": _minicpm,
}

DEFAULT_TEMPLATE = "llama2"  # llama.cpp's fallback when a model has no chat template


# ----------------------------------------------------------------------------------------------------------
# Jinja


class _TemplateRaised(jinja2.TemplateError):
    """What `raise_exception(msg)` raises inside a template."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    # transformers' tojson: plain json.dumps, without jinja's HTML escaping
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Sandbox(limits.LimitedSandbox):
    def unsafe_undefined(self, obj: Any, attribute: str):
        # The stock sandbox returns an Undefined that renders as "" - fail loudly instead.
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _environment() -> limits.LimitedSandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.limit_filters()
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def _template_error(detail: str) -> HybridInferError:
    detail = " ".join(str(detail).split()) or "unknown error"
    if len(detail) > 300:  # e.g. a KeyError that quotes a long key
        detail = detail[:297] + "..."
    names = ", ".join(BUILTIN_TEMPLATES)
    return HybridInferError(
        f"chat template error: {detail}; pass --chat-template NAME ({names}) to use a built-in format instead"
    )


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise _template_error(f"{error.message} (line {error.lineno})") from None
    except jinja2.TemplateError as error:
        raise _template_error(str(error)) from None
    except (SyntaxError, ValueError, TypeError, OverflowError) as error:  # e.g. nesting too deep for Python
        raise _template_error(f"cannot compile the template: {type(error).__name__}: {error}") from None


def _is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


def render_chat(
    messages: list[dict],
    template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) as the model's prompt text.

    `template` is Jinja source (the GGUF's `tokenizer.chat_template`), a built-in name ("chatml", "llama2",
    "minicpm"), or None/"" for llama.cpp's fallback, llama2. `extra` are further Jinja variables (tools,
    enable_thinking, ...); built-in formats ignore them. The result may start with `bos_token`: the caller
    must then not add another BOS when tokenizing.
    """
    if template is None or not template.strip():
        template = DEFAULT_TEMPLATE
    if not _is_jinja(template):
        name = template.strip()
        if name not in BUILTIN_TEMPLATES:
            names = ", ".join(BUILTIN_TEMPLATES)
            raise HybridInferError(
                f"unknown chat template {name[:60]!r}: pass --chat-template with one of {names}, or a Jinja template"
            )
        try:
            return BUILTIN_TEMPLATES[name](
                messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise HybridInferError(f"invalid chat messages for the {name} format: {error!r}") from None

    context = dict(extra)
    context.update(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
    )
    try:
        return limits.render(functools.partial(_compile, template), context)
    except limits.TemplateLimitError as error:
        raise _template_error(str(error)) from None
    except RecursionError:
        raise _template_error("the template recursed too deeply") from None
    except MemoryError:
        raise _template_error("the template ran out of memory") from None
    except _TemplateRaised as error:
        raise _template_error(f"the template raised: {error}") from None
    except jinja2.TemplateError as error:  # undefined variables, sandbox violations, ...
        raise _template_error(f"{type(error).__name__}: {error}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as error:
        raise _template_error(f"{type(error).__name__}: {error}") from None

