"""`hybridinfer serve --api-key` (or $HYBRIDINFER_API_KEY): a key no client could send, or an empty one that would
let anyone in, is refused at start with one `error:` line (before the model loads); a usable key compares
exactly. The CLI cases never load a model (the path does not exist); the comparison runs on a two-route app."""

import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.serve.api_key import key_check
from hybridinfer.serve.openai_errors import install_error_handlers

KEY = "sk-Key_1.x"


def refused_at_start(*args, env=None) -> str:
    """Run `serve` on a model that does not exist: the key must be refused first. Return the one error line."""
    result = CliRunner(env=env).invoke(cli, ["serve", "-m", "/nonexistent/model.gguf", "--port", "0", *args])
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "model.gguf" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("key", ["", " sk-secret", "sk-secret ", "sk secret", "sk-s\u00e9cret", "sk-\tsecret",
                                 "sk-secret\n", "sk-\u200bsecret"])
def test_an_empty_or_unsendable_key_is_refused_at_start(key):
    line = refused_at_start("--api-key", key)
    assert "--api-key" in line and "secret" not in line  # the key is never echoed
    assert ("empty" in line) if key == "" else ("printable ASCII" in line)


@pytest.mark.parametrize("value", ["", " sk-secret ", "sk-s\u00e9cret"])
def test_the_environment_variable_is_held_to_the_same_rule(value):
    line = refused_at_start(env={"HYBRIDINFER_API_KEY": value})
    assert "HYBRIDINFER_API_KEY" in line and "secret" not in line


def test_an_empty_flag_is_refused_even_with_the_variable_set():
    assert "--api-key is empty" in refused_at_start("--api-key", "", env={"HYBRIDINFER_API_KEY": KEY})


@pytest.fixture(scope="module")
def guarded():
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/private", dependencies=[Depends(key_check(KEY))])
    async def private():
        return {"ok": True}

    return TestClient(app)


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"Bearer   {KEY}", f"Bearer {KEY}  "])
def test_the_key_is_accepted_as_given(guarded, header):
    assert guarded.get("/private", headers={"Authorization": header}).json() == {"ok": True}


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", KEY, f"Basic {KEY}", f"Bearer {KEY.upper()}",
                                    f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Bearer x{KEY}", f"Bearer {KEY} x",
                                    f"Bearer {KEY}".encode() + b"\xe9", b"Bearer \xff\xfe"])
def test_any_other_key_is_a_401(guarded, header):
    response = guarded.get("/private", headers={"Authorization": header})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", response.text


@pytest.mark.parametrize("key", ["", " k", "k\u00e9"])
def test_the_app_refuses_an_unsendable_key_too(key):
    with pytest.raises(HybridInferError, match="api_key"):
        key_check(key)
