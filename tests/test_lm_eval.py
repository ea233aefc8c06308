"""lm-evaluation-harness's `local-completions` model against a real `hybridinfer serve`, offline: the local task
of tools/lm_eval_recipe.py, lm-eval's tokenizer through the server's /tokenizer_info, /tokenize and /detokenize
(no Hugging Face tokenizer), and every log-likelihood lm-eval computes equal to our own (`Engine.logits` on the
same tokens, with the BOS the model's file asks for) and its greedy flag to our argmax check.

lm-eval is the optional extra `.[eval]` (`make test` installs it); without it this file is skipped, saying so.
"""

import importlib.util
import os

import numba
import numpy as np
import pytest
import torch

import hybridinfer
from tiny_models import random_weights, write_tiny_gguf
from tools.lm_eval_recipe import TASK, offline_environment, questions, write_task
from server_process import running_server

if importlib.util.find_spec("lm_eval") is None:  # not imported here: the offline settings must come first
    pytest.skip("lm-eval is not installed: pip install -e '.[eval]' (make test does)", allow_module_level=True)

N_CTX = 512
LIMIT = 12  # questions scored (4 choices each: 48 requests)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=N_CTX)


@pytest.fixture(scope="module")
def engine(model):
    counts = torch.get_num_threads(), numba.get_num_threads()
    yield hybridinfer.load(str(model), n_ctx=N_CTX, n_threads=1)
    torch.set_num_threads(counts[0])
    numba.set_num_threads(counts[1])


@pytest.fixture(scope="module")
def server(model):
    with running_server(["-m", model, "-c", N_CTX, "-t", "1"]) as process:
        yield process.url


@pytest.fixture(scope="module")
def evaluated(server, tmp_path_factory):
    """lm_eval.simple_evaluate's results for LIMIT questions of the local task, with its samples, run offline."""
    saved = dict(os.environ)
    os.environ.update(offline_environment())
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets"))
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        folder = tmp_path_factory.mktemp("task")
        write_task(folder)
        return lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"base_url": f"{server}/v1/completions", "model": "tiny.gguf", "tokenizer_backend": "remote",
                        "num_concurrent": 1, "max_retries": 1, "max_length": N_CTX - 1},
            tasks=[TASK], task_manager=TaskManager(include_path=str(folder)), limit=LIMIT, log_samples=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def our_loglikelihood(engine, context: str, continuation: str) -> tuple[float, bool]:
    """What lm-eval asks for, computed here: its tokenization (the context's trailing spaces moved to the
    continuation, the whole encoded and split at the context's length, no BOS), our BOS, one forward pass."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = engine.tokenize(context, add_bos=False)
    whole = engine.tokenize(context + continuation, add_bos=False)
    ids = [engine.tokenizer.bos_id] + whole  # the tiny model's file asks for BOS: the server puts it first
    logprobs = torch.log_softmax(torch.from_numpy(engine.logits(ids)).double(), dim=-1)
    positions = range(1 + len(context_ids), len(ids))
    total = sum(logprobs[p - 1, ids[p]].item() for p in positions)
    greedy = all(int(logprobs[p - 1].argmax()) == ids[p] for p in positions)
    return total, greedy


def test_lm_eval_scores_the_local_task_through_the_server(evaluated):
    result = evaluated["results"][TASK]
    assert 0.0 <= result["acc,none"] <= 1.0 and 0.0 <= result["acc_norm,none"] <= 1.0
    assert len(evaluated["samples"][TASK]) == LIMIT


def test_lm_eval_loglikelihoods_equal_ours(evaluated, engine):
    docs = questions()
    compared = 0
    for sample in evaluated["samples"][TASK]:
        doc = docs[sample["doc_id"]]
        assert sample["doc"]["question"] == doc["question"]
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            loglikelihood, greedy = response[0]
            ours, our_greedy = our_loglikelihood(engine, context, continuation)
            assert loglikelihood == pytest.approx(ours, abs=1e-4), (context, continuation)
            assert greedy == our_greedy
            compared += 1
    assert compared == 4 * LIMIT
    accuracy = np.mean([int(np.argmax([r[0][0] for r in s["resps"]]) == s["target"])
                        for s in evaluated["samples"][TASK]])
    assert evaluated["results"][TASK]["acc,none"] == pytest.approx(accuracy)
