"""The recipe end to end on a tiny model and a synthetic corpus: variants, sweep, export, report, determinism."""

import json
import random

import pytest
import torch

from hybridinfer.text.corpus import Corpus
from tools.prosparse.model import SparseLlamaConfig
from tools.prosparse.recipe import VARIANTS, RecipeSettings, run_recipe
from tools.prosparse.report import write_report
from tools.prosparse.schedule import RegularizationStage
from tools.prosparse.train import TrainSettings

WORDS = ("return the value of a list when given an index raise error if key is missing open file read "
         "write bytes string number default argument class method module object call").split()


def synthetic_corpus() -> Corpus:
    rng = random.Random(0)
    def documents(n):
        return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))).capitalize() + "." for _ in range(n)]
    return Corpus(train=documents(400), validation=documents(40), test=documents(40))


SETTINGS = RecipeSettings(
    model=SparseLlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32),
    train=TrainSettings(total_steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=4, mixed_precision=False),
    dense_steps=4, substitution_steps=2,
    l1_stages=(RegularizationStage(0.01, 2), RegularizationStage(0.5, 6)),
    threshold_quantiles=(0.1, 0.5), threshold_tolerance=0.05,
    validation_tokens=256, sweep_tokens=512,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("recipe")
    result = run_recipe(SETTINGS, str(root / "model"), str(root / "work"), corpus=synthetic_corpus())
    return root, result


def test_all_variants_are_measured_with_the_same_budget(built):
    _, result = built
    metrics = result.metrics
    assert tuple(metrics["variants"]) == VARIANTS
    logs = metrics["logs"]
    assert [p["step"] for p in logs["dense SiLU"]["train"]] == list(range(12))
    assert [p["step"] for p in logs["ReLU"]["train"]] == list(range(12))
    # ReLU + L1 shares ReLU's history up to step 6 and regularizes from there
    assert [p["l1_factor"] > 0 for p in logs["ReLU + L1"]["train"]] == [False] * 6 + [True] * 6
    assert logs["ReLU + L1"]["train"][:6] == logs["ReLU"]["train"][:6]
    assert metrics["variants"]["dense SiLU"]["average_sparsity"] == 0.0
    fat = metrics["variants"]["FATReLU"]
    assert fat["average_sparsity"] >= metrics["variants"]["ReLU + L1"]["average_sparsity"]
    assert len(fat["sparsity_per_layer"]) == len(fat["top20_share_per_layer"]) == 2
    assert all(0.2 <= share <= 1.0 for share in fat["top20_share_per_layer"])


def test_threshold_sweep_picks_the_largest_threshold_within_tolerance(built):
    _, result = built
    sweep = result.metrics["threshold_sweep"]
    assert sweep["points"][0]["threshold"] == 0.0
    allowed = [p["threshold"] for p in sweep["points"] if p["perplexity_increase"] <= sweep["tolerance"]]
    assert sweep["chosen"]["threshold"] == max(allowed)
    assert result.models["FATReLU"].config.hidden_act_param == sweep["chosen"]["threshold"]


def test_exported_directory_holds_the_fatrelu_model(built):
    root, result = built
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["hidden_act"] == "fatrelu"
    assert config["hidden_act_param"] == result.metrics["threshold_sweep"]["chosen"]["threshold"]
    assert (root / "model" / "tokenizer.model").exists()
    assert json.loads((root / "work" / "metrics.json").read_text())["variants"].keys() == result.metrics["variants"].keys()


def test_report_is_generated_from_the_metrics(built, tmp_path):
    _, result = built
    markdown, png = write_report(result.metrics, str(tmp_path / "recipe.md"), "test command")
    text = open(markdown).read()
    fat = result.metrics["variants"]["FATReLU"]
    assert f"{fat['perplexity']:.2f}" in text and f"{100 * fat['average_sparsity']:.1f}%" in text
    assert "![training curves and λ](recipe.png)" in text
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_rebuild_is_deterministic(built, tmp_path):
    root, first = built
    second = run_recipe(SETTINGS, str(tmp_path / "model"), str(tmp_path / "work"), corpus=synthetic_corpus())
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (root / "model" / "model.safetensors").read_bytes()
    assert second.metrics["variants"] == first.metrics["variants"]
