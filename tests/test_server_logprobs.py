"""`hybridinfer serve`'s log-probabilities, echo, lists of prompts, token-id prompts, logit_bias and tokenizer
endpoints, through OpenAI's own client and raw HTTP (httpx): every log-probability equals the log-softmax of
`Engine.logits` on the same tokens (the prompt's in one pass, each generated token's over prompt and tokens
before it), and bad values are a 400.

One real server for most of the file: `python -m hybridinfer serve --parallel 2` in a subprocess with a tiny
SentencePiece model whose file asks for BOS. The sparse modes and the hybrid runtime are served in-process
(TestClient) at the end.
"""

import math

import httpx
import numpy as np
import openai
import pytest
import torch
from fastapi.testclient import TestClient

import hybridinfer
from hybridinfer.serve.app import create_app
from hybridinfer.serve.logprobs import token_string
from hybridinfer.serve.scheduler import Scheduler
from hybridinfer.text.prompts import chat_prompt_tokens
from logit_checks import write_sparsity_file
from tiny_models import random_weights, write_tiny_gguf
from server_process import running_server

N_CTX, N_PARALLEL = 512, 2  # each slot holds 256 tokens
TOLERANCE = 1e-4  # the server's numbers against this process's engine: the same kernels, one thread each


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=N_CTX)


pytestmark = pytest.mark.usefixtures("threads_restored")


@pytest.fixture(scope="module")
def engine(model):
    return hybridinfer.load(str(model), n_ctx=N_CTX // N_PARALLEL, n_threads=1)


@pytest.fixture(scope="module")
def server(model):
    with running_server(["-m", model, "-c", N_CTX, "--parallel", N_PARALLEL, "-t", "1", "--queue-size", "8"]) \
            as process:
        yield process.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as session:
        yield session


def log_softmax(engine, ids: list[int]) -> np.ndarray:
    """float64 [len(ids), n_vocab]: log-softmax of `Engine.logits(ids)`."""
    return torch.log_softmax(torch.from_numpy(engine.logits(ids)).double(), dim=-1).numpy()


def expected_prompt(engine, ids: list[int], shown: int) -> list[float | None]:
    """The log-probabilities of the last `shown` of `ids` (None for the first id, which nothing precedes)."""
    rows = log_softmax(engine, ids)
    return [None if p == 0 else rows[p - 1, ids[p]] for p in range(len(ids) - shown, len(ids))]


def assert_close(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < TOLERANCE), (got, expected)


def greedy_tokens(engine, prompt, n: int) -> list[int]:
    result = engine.generate(prompt, max_tokens=n, temperature=0)
    assert result.finish_reason == "length"  # no end of text: every token is in the answer
    return result.tokens


# ---- /v1/completions ---------------------------------------------------------------------------------------


def test_echo_with_max_tokens_0_scores_the_prompt_in_one_pass(client, engine):
    ids = engine.tokenize("hello world of the")  # BOS first: the file asks for it
    answer = client.completions.create(model="x", prompt="hello world of the", max_tokens=0, echo=True, logprobs=3)
    choice = answer.choices[0]
    assert choice.text == "hello world of the" and choice.finish_reason == "length"
    assert answer.usage.completion_tokens == 0 and answer.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert lp.tokens == [token_string(engine.tokenizer, t) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # as OpenAI's: nothing precedes it
    assert_close(lp.token_logprobs, expected_prompt(engine, ids, len(ids)))
    rows = log_softmax(engine, ids)
    for p in range(1, len(ids)):
        best = np.argsort(-rows[p - 1], kind="stable")[:3]
        top = {token_string(engine.tokenizer, int(t)): rows[p - 1, t] for t in best}
        top.setdefault(lp.tokens[p], rows[p - 1, ids[p]])  # the chosen token is always there
        assert lp.top_logprobs[p].keys() == top.keys()
        assert all(abs(lp.top_logprobs[p][k] - v) < TOLERANCE for k, v in top.items())
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_generated_tokens_logprobs_over_raw_http(http, engine):
    prompt = "a story of the world"
    ids = engine.tokenize(prompt)
    generated = greedy_tokens(engine, prompt, 6)
    answer = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0,
                                                "logprobs": 2}).json()
    choice = answer["choices"][0]
    assert choice["text"] == engine.detokenize(generated) and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == [token_string(engine.tokenizer, t) for t in generated]
    assert_close(lp["token_logprobs"], expected_prompt(engine, ids + generated, len(generated)))
    for chosen, top in zip(lp["tokens"], lp["top_logprobs"]):
        assert len(top) == 2 and max(top, key=top.get) == chosen  # greedy: the most probable token
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_token_id_prompts_get_the_bos_the_file_asks_for_unechoed(http, engine):
    """As lm-eval sends them: ids without BOS, echo, max_tokens 1, logprobs 1."""
    ids = engine.tokenize("the world", add_bos=False)
    generated = greedy_tokens(engine, [engine.tokenizer.bos_id] + ids, 1)
    answer = http.post("/v1/completions", json={"prompt": [ids], "max_tokens": 1, "temperature": 0, "logprobs": 1,
                                                "echo": True}).json()
    lp = answer["choices"][0]["logprobs"]
    assert lp["tokens"] == [token_string(engine.tokenizer, t) for t in ids + generated]  # no BOS shown
    with_bos = [engine.tokenizer.bos_id] + ids + generated
    assert_close(lp["token_logprobs"], expected_prompt(engine, with_bos, len(ids) + 1))  # the first is not None
    assert answer["usage"]["prompt_tokens"] == len(ids) + 1
    plain = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "logprobs": 0, "echo": True,
                                               "add_special_tokens": False}).json()
    assert_close(plain["choices"][0]["logprobs"]["token_logprobs"], expected_prompt(engine, ids, len(ids)))
    given = http.post("/v1/completions", json={"prompt": [engine.tokenizer.bos_id] + ids, "max_tokens": 0,
                                               "logprobs": 0, "echo": True}).json()  # BOS given: not added twice
    assert given["usage"]["prompt_tokens"] == len(ids) + 1
    assert given["choices"][0]["logprobs"]["token_logprobs"][0] is None


@pytest.mark.parametrize("as_ids", [False, True])
def test_a_list_of_prompts_answers_each_as_its_own_choice(client, engine, as_ids):
    prompts = ["hello world", "the", "it is a story", "and to the"]
    expected = [engine.generate(p, max_tokens=8, temperature=0) for p in prompts]
    given = [engine.tokenize(p) for p in prompts] if as_ids else prompts
    answer = client.completions.create(model="x", prompt=given, max_tokens=8, temperature=0)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text for c in answer.choices] == [e.text for e in expected]
    assert [c.finish_reason for c in answer.choices] == [e.finish_reason for e in expected]
    assert answer.usage.prompt_tokens == sum(len(engine.tokenize(p)) for p in prompts)
    assert answer.usage.completion_tokens == sum(len(e.tokens) for e in expected)
    streamed = client.completions.create(model="x", prompt=given, max_tokens=8, temperature=0, stream=True)
    texts = ["", "", "", ""]
    for chunk in streamed:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == [e.text for e in expected]


def test_a_list_of_echoed_prompts_scores_each(http, engine):
    prompts = ["hello world", "the world of a"]
    answer = http.post("/v1/completions", json={"prompt": prompts, "max_tokens": 0, "echo": True,
                                                "logprobs": 1}).json()
    for choice, prompt in zip(answer["choices"], prompts):
        ids = engine.tokenize(prompt)
        assert choice["text"] == prompt
        assert_close(choice["logprobs"]["token_logprobs"], expected_prompt(engine, ids, len(ids)))


def test_a_streamed_completion_carries_logprobs_in_its_chunks(client, engine):
    prompt = "it is the"
    whole = client.completions.create(model="x", prompt=prompt, max_tokens=5, temperature=0, echo=True, logprobs=2)
    chunks = list(client.completions.create(model="x", prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                            logprobs=2, stream=True))
    joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs is not None:
            for key in joined:
                joined[key] += getattr(chunk.choices[0].logprobs, key)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[0].choices[0].text == prompt and chunks[0].choices[0].logprobs.token_logprobs[0] is None
    assert joined == whole.choices[0].logprobs.model_dump()
    assert chunks[-1].choices[0].finish_reason == "length"


def test_echo_without_logprobs_and_without_tokens(http):
    answer = http.post("/v1/completions", json={"prompt": "the end", "max_tokens": 0, "echo": True}).json()
    assert answer["choices"][0]["text"] == "the end" and answer["choices"][0]["logprobs"] is None
    streamed = http.post("/v1/completions", json={"prompt": "the end", "max_tokens": 0, "echo": True,
                                                  "stream": True}).text
    assert '"text": "the end"' in streamed and streamed.rstrip().endswith("data: [DONE]")


def test_logit_bias_steers_the_sampler_and_leaves_the_logprobs_raw(http, engine):
    prompt = "hello world"
    ids = engine.tokenize(prompt)
    favored = 200
    answer = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                                "logprobs": 0, "logit_bias": {str(favored): 100}}).json()
    lp = answer["choices"][0]["logprobs"]
    assert lp["tokens"] == [token_string(engine.tokenizer, favored)] * 4
    assert_close(lp["token_logprobs"], expected_prompt(engine, ids + [favored] * 4, 4))  # unbiased
    first = greedy_tokens(engine, prompt, 1)[0]
    banned = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 0,
                                                "logit_bias": {str(first): -100}}).json()
    chosen = banned["choices"][0]["logprobs"]["tokens"][0]
    rows = log_softmax(engine, ids)[-1]
    rows[first] = -math.inf
    assert chosen == token_string(engine.tokenizer, int(np.argmax(rows)))  # the runner-up
    sampled = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "seed": 3,
                                                 "logprobs": 0, "logit_bias": {str(t): -100 for t in range(250)}})
    assert all(t in {token_string(engine.tokenizer, i) for i in range(250, engine.config.n_vocab)}
               for t in sampled.json()["choices"][0]["logprobs"]["tokens"])


# ---- /v1/chat/completions ----------------------------------------------------------------------------------


def test_chat_logprobs_in_openais_chat_shape(client, engine):
    messages = [{"role": "user", "content": "hello world"}]
    prompt = chat_prompt_tokens(engine.tokenizer, messages, None)
    generated = greedy_tokens(engine, prompt, 5)
    answer = client.chat.completions.create(model="x", messages=messages, max_tokens=5, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert [c.token for c in content] == [token_string(engine.tokenizer, t) for t in generated]
    assert [bytes(c.bytes) for c in content] == [engine.tokenizer.piece_bytes(t, True) for t in generated]
    assert_close([c.logprob for c in content], expected_prompt(engine, prompt + generated, len(generated)))
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    streamed = client.chat.completions.create(model="x", messages=messages, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=2, stream=True)
    pieces = [e for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
              for e in chunk.choices[0].logprobs.content]
    assert [p.model_dump() for p in pieces] == [c.model_dump() for c in content]
    plain = client.chat.completions.create(model="x", messages=messages, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


# ---- tokenizer endpoints -----------------------------------------------------------------------------------


def test_the_tokenizer_endpoints_in_vllms_shape(http, engine):
    info = http.get("/tokenizer_info").json()
    assert info["bos_token"] == "<s>" and info["eos_token"] == "</s>" and info["add_bos_token"] is True
    assert info["model_max_length"] == N_CTX // N_PARALLEL and info["vocab_size"] == engine.config.n_vocab
    text = "hello world"
    plain = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert plain == {"count": len(engine.tokenize(text, add_bos=False)), "max_model_len": N_CTX // N_PARALLEL,
                     "tokens": engine.tokenize(text, add_bos=False)}
    assert http.post("/tokenize", json={"prompt": text}).json()["tokens"] == engine.tokenize(text)
    assert http.post("/tokenize", json={"prompt": "</s>", "add_special_tokens": False}).json()["tokens"] == \
        [engine.tokenizer.eos_id]  # special tokens' texts are their ids (lm-eval finds EOS and BOS this way)
    named = http.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert named["token_strs"] == [engine.tokenizer.tokens[t] for t in named["tokens"]]
    messages = [{"role": "user", "content": "hi"}]
    assert http.post("/tokenize", json={"messages": messages}).json()["tokens"] == \
        chat_prompt_tokens(engine.tokenizer, messages, None)
    assert http.post("/detokenize", json={"tokens": plain["tokens"]}).json() == {"prompt": text}


# ---- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"logit_bias": {"274": 1}}, "logit_bias"),  # the vocabulary has 274 tokens
    ("/v1/completions", {"logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"the": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"5": 100.5}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"5": -101}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {str(i): -100 for i in range(274)}}, "logit_bias"),
    ("/v1/completions", {"prompt": ["one", [1, 2]]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], []]}, None),
    ("/v1/completions", {"prompt": [[1, 2], [3, 9999]]}, None),
    ("/v1/completions", {"prompt": ["x"] * 9}, "prompt"),  # more than --queue-size 8
    ("/v1/completions", {"prompt": ["x", "y " * 300]}, "prompt.1"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": 2}, "logprobs"),
    ("/tokenize", {"prompt": None}, "prompt"),
    ("/detokenize", {"tokens": [5, 274]}, "tokens"),
])
def test_bad_values_are_a_400_naming_the_field(http, path, extra, param):
    base = {"/v1/completions": {"prompt": "hi", "max_tokens": 2}, "/tokenize": {}, "/detokenize": {},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}[path]
    response = http.post(path, json={**base, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert http.get("/health").json()["status"] == "ok"


# ---- every mode --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparsity_files(silu_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s")
    return {method: write_sparsity_file(silu_model, folder / f"{method}.sparsity.gguf", 0.4, method)
            for method in ("cats", "teal")}


# token by token against one pass: int8 activations quantized per token or per batch, sums in another order
MODE_TOLERANCE = {"cats": 1e-3, "teal": 1e-3, "exact": 1e-3, "predictors": 1e-3, "hybrid": 1e-3}
REFERENCE = "models/prosparse-tiny.q8_0.gguf"  # the ProSparse reference model (ReLU) and its predictors


@pytest.mark.parametrize("mode", ["cats", "teal", "exact", "predictors", "hybrid"])
def test_every_sparse_mode_and_the_hybrid_runtime_serve_logprobs(mode, silu_model, sparsity_files):
    """Echo and generated tokens' log-probabilities equal that engine's own `Engine.logits` (the prompt and the
    decoded tokens: one pass against token by token)."""
    options = {"cats": {"sparsity_file": str(sparsity_files["cats"])},
               "teal": {"sparsity_file": str(sparsity_files["teal"])},
               "exact": {"exact": True}, "predictors": {"predictors": "models/prosparse-tiny.pred.gguf"},
               "hybrid": {"n_gpu_layers": 1, "device": "cpu", "gpu_kernels": "torch"}}[mode]
    path = str(silu_model) if mode in ("cats", "teal") else REFERENCE
    engine = hybridinfer.load(path, n_ctx=128, n_threads=1, **options)
    assert engine.mode == {"cats": "cats 40%", "teal": "teal 40%"}.get(mode, mode)
    scheduler = Scheduler(engine, n_parallel=1)
    try:
        with TestClient(create_app(engine, scheduler)) as session:
            answer = session.post("/v1/completions", json={"prompt": "the quick brown fox", "max_tokens": 4,
                                                           "temperature": 0, "echo": True, "logprobs": 1}).json()
    finally:
        scheduler.close()
    lp = answer["choices"][0]["logprobs"]
    ids = engine.tokenize("the quick brown fox")
    result = engine.generate(ids, max_tokens=4, temperature=0)
    generated = result.tokens + ([engine.tokenizer.eos_id] if result.finish_reason == "stop" else [])  # scored too
    assert lp["tokens"] == [token_string(engine.tokenizer, t) for t in ids + generated]
    assert_close(lp["token_logprobs"][:len(ids)], expected_prompt(engine, ids, len(ids)))  # the same pass
    decoded = expected_prompt(engine, ids + generated, len(generated))
    assert np.allclose(lp["token_logprobs"][len(ids):], decoded, atol=MODE_TOLERANCE[mode])
