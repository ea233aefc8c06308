"""Prompts as token ids, and the tokenizer endpoints vLLM serves and lm-evaluation-harness's remote tokenizer uses
(`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`), so a client needs no Hugging Face tokenizer.

BOS. A text prompt gets BOS as the model's file says (`tokenizer.ggml.add_bos_token`), as `generate` does. A
prompt of token ids gets it too when the file says so and the ids do not already start with it: lm-eval sends the
ids of `/tokenize` with `add_special_tokens: false` (no BOS), and a model trained with BOS (LLaMA, ProSparse)
scores abnormally without one. That BOS is evaluated but not echoed: the echoed tokens and their log-probabilities
are exactly the ids sent, so a client's positions (lm-eval's context length) stay right, and the first id sent
gets a real log-probability, conditioned on BOS. `add_special_tokens: false` in the request turns BOS off for
text and ids alike (llama.cpp's and vLLM's servers never add BOS to ids).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import HybridInferError
from ..text.chat_template import render_chat
from ..text.prompts import chat_prompt_tokens
from .schemas import DetokenizeRequest, RequestError, TokenizeRequest


def prompt_tokens(tokenizer, n_vocab: int, prompt: str | list[int], add_special: bool) -> tuple[list[int], int]:
    """(token ids to evaluate, how many leading ones the server added: 1 for a BOS put before ids, else 0)."""
    if isinstance(prompt, str):
        tokens, added = tokenizer.encode(prompt, add_bos=None if add_special else False), 0
    else:
        tokens = list(prompt)
        bad = [t for t in tokens if not 0 <= t < n_vocab]
        if bad:
            raise HybridInferError(f"token id {bad[0]} in the prompt is outside the vocabulary (0..{n_vocab - 1})")
        added = int(bool(add_special and tokens and tokenizer.add_bos and tokenizer.bos_id is not None
                         and tokens[0] != tokenizer.bos_id))
        tokens = [tokenizer.bos_id] * added + tokens
    if not tokens:
        raise HybridInferError("the prompt is empty")
    return tokens, added


def tokenizer_router(engine, template: str | None, n_ctx: int, parse_body, dependencies: list) -> APIRouter:
    """The tokenizer endpoints for `engine`'s vocabulary; `template` is the chat template the chat endpoint uses,
    `n_ctx` the positions of a slot, `parse_body(request, model)` the app's reader of request bodies."""
    tokenizer, n_vocab = engine.tokenizer, engine.config.n_vocab
    router = APIRouter(dependencies=dependencies)

    def special(token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < tokenizer.vocab_size:
            return None
        return tokenizer.tokens[token_id]

    def metadata_id(key: str) -> int | None:
        value = engine.file.get(key)
        return None if value is None else int(value)

    info = {"tokenizer_class": f"hybridinfer.{type(tokenizer).__name__}",
            "bos_token": special(tokenizer.bos_id), "eos_token": special(tokenizer.eos_id),
            "pad_token": special(metadata_id("tokenizer.ggml.padding_token_id")),
            "unk_token": special(metadata_id("tokenizer.ggml.unknown_token_id")),
            "add_bos_token": tokenizer.add_bos, "vocab_size": n_vocab, "model_max_length": n_ctx,
            "chat_template": template if template and ("{{" in template or "{%" in template) else None}

    @router.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        return info

    @router.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await parse_body(request, TokenizeRequest)
        if body.prompt is not None:
            tokens = tokenizer.encode(body.prompt, add_bos=None if body.add_special_tokens is not False else False)
        else:
            tokens = chat_tokens(tokenizer, body, template)
        answer = {"count": len(tokens), "max_model_len": n_ctx, "tokens": tokens}
        if body.return_token_strs:
            answer["token_strs"] = [tokenizer.tokens[t] for t in tokens]
        return answer

    @router.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        body = await parse_body(request, DetokenizeRequest)
        bad = [t for t in body.tokens if not 0 <= t < n_vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})", param="tokens")
        return {"prompt": tokenizer.decode(body.tokens)}

    return router


def chat_tokens(tokenizer, body: TokenizeRequest, template: str | None) -> list[int]:
    """The ids /v1/chat/completions evaluates for `body.messages` (BOS as it adds it); without the generation
    prompt when `add_generation_prompt` is false."""
    messages = [{"role": m.role, "content": m.text() or ""} for m in body.messages]
    if body.add_generation_prompt is not False:
        return chat_prompt_tokens(tokenizer, messages, template)
    bos = tokenizer.decode([tokenizer.bos_id], skip_special=False) if tokenizer.bos_id is not None else ""
    eos = tokenizer.decode([tokenizer.eos_id], skip_special=False) if tokenizer.eos_id is not None else ""
    rendered = render_chat(messages, template, bos_token=bos, eos_token=eos, add_generation_prompt=False)
    return tokenizer.encode(rendered, add_bos=tokenizer.add_bos and not (bos and rendered.startswith(bos)))
