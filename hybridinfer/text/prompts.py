"""Token ids of a prompt: a completion's text or ids, or a chat rendered with the model's chat template (for
`chat` and `serve`).

`chat_prompt_tokens` renders a conversation exactly as `hybridinfer chat` does (the template's BOS and EOS
strings; BOS added only when the rendered text does not already start with it). No HTTP here: problems are
`HybridInferError`s, which the server answers with 400.
"""

from __future__ import annotations

from ..errors import HybridInferError
from .chat_template import render_chat


def chat_template_for(engine, override: str | None = None) -> str | None:
    """The template a chat uses: `override` (Jinja source or a built-in name), else the model's own, else
    "minicpm" for the minicpm architecture; None means render_chat's fallback (llama2, as llama.cpp)."""
    if override:
        return override
    return engine.chat_template or ("minicpm" if engine.config.architecture == "minicpm" else None)


def chat_prompt_tokens(tokenizer, messages: list[dict], template: str | None) -> list[int]:
    """Token ids of `messages` ([{"role", "content"}, ...]) rendered with `template`, ready for the reply."""
    bos = tokenizer.decode([tokenizer.bos_id], skip_special=False) if tokenizer.bos_id is not None else ""
    eos = tokenizer.decode([tokenizer.eos_id], skip_special=False) if tokenizer.eos_id is not None else ""
    rendered = render_chat(messages, template, bos_token=bos, eos_token=eos, add_generation_prompt=True)
    add_bos = tokenizer.add_bos and not (bos and rendered.startswith(bos))
    return tokenizer.encode(rendered, add_bos=add_bos)


def completion_prompt_tokens(tokenizer, n_vocab: int, prompt: str | list[int] | list[str]) -> list[int]:
    """Token ids of a completion's `prompt`: text (BOS as the model says, like `generate`), token ids as
    given, or a list of one string."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    tokens = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not tokens:
        raise HybridInferError("the prompt is empty")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise HybridInferError(f"token id {bad[0]} in the prompt is outside the vocabulary (0..{n_vocab - 1})")
    return tokens
