"""The API key of `hybridinfer serve`: which keys a client can send, and the check every request but /health passes.

A client sends the key as `Authorization: Bearer <key>`. HTTP header values are bytes (ASCII in practice: httpx
and OpenAI's clients refuse others) and servers strip the spaces around them, so a key with spaces, control or
non-ASCII characters could never match, and an empty one would let in anyone who sends `Bearer`: both are
refused when the server starts. A key that passes compares exactly, in constant time.
"""

from __future__ import annotations

import re
import secrets

from fastapi import Request

from ..errors import HybridInferError
from .openai_errors import APIError

_SENDABLE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def usable_api_key(key: str, source: str = "--api-key") -> str:
    """`key` if a client can send it; HybridInferError naming `source` (never echoing the key) otherwise."""
    if not key:
        raise HybridInferError(f"{source} is empty, which would let anyone in: give the key clients must send, "
                               f"or drop {source} to serve without one")
    if not _SENDABLE.fullmatch(key):
        raise HybridInferError(f"{source} holds spaces, control or non-ASCII characters, which no client can send "
                               "in an HTTP header: use printable ASCII without spaces (e.g. from `openssl rand -hex 32`)")
    return key


def key_check(api_key: str | None):
    """A route dependency refusing (401) a request without `Authorization: Bearer <api_key>`; none without a key."""
    expected = None if api_key is None else usable_api_key(api_key, "api_key").encode("ascii")

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # the spaces and tabs around the key are HTTP's (RFC 9110's OWS), not the key's. Starlette decodes header
        # values as latin-1: encoding back gives the bytes the client sent
        given = given.strip(" \t").encode("latin-1")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
    return check
