"""The training model's activations: FATReLU's boundary, the L1 term, activation substitution."""

import torch

from tools.prosparse.model import FATReLU, SparseLlamaConfig, SparseLlamaForCausalLM
from tools.prosparse.train import ffn_l1

TINY = SparseLlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)


def test_fatrelu_keeps_values_equal_to_the_threshold():
    v = torch.tensor([-1.0, 0.0, 0.0999, 0.1, 0.1001, 2.0])
    out = FATReLU(0.1)(v)
    assert out.tolist() == [0.0, 0.0, 0.0, v[3].item(), v[4].item(), 2.0]  # v == T is kept (HF ProSparse code)


def test_fatrelu_zero_threshold_is_relu():
    v = torch.randn(1000)
    assert torch.equal(FATReLU(0.0)(v), torch.relu(v))


def test_l1_term_is_mean_absolute_activation_averaged_over_layers():
    a = torch.tensor([[[1.0, -2.0], [0.0, 3.0]]])  # mean |a| = 1.5
    b = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])  # mean |a| = 0.5
    assert ffn_l1([a, b]).item() == 1.0


def test_collected_activations_are_act_of_gate():
    torch.manual_seed(0)
    model = SparseLlamaForCausalLM(TINY.with_activation("fatrelu", 0.01))
    ids = torch.randint(0, 64, (2, 8))
    seen = {}
    model.model.layers[1].mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.update(gate=o))
    logits, activations = model(ids, collect_activations=True)
    assert logits.shape == (2, 8, 64) and len(activations) == 2 and activations[1].shape == (2, 8, 48)
    gate = seen["gate"]
    assert torch.equal(activations[1], torch.where(gate >= 0.01, gate, torch.zeros_like(gate)))


def test_l1_gradient_pushes_active_gates_down():
    torch.manual_seed(0)
    model = SparseLlamaForCausalLM(TINY.with_activation("relu"))
    _, activations = model(torch.randint(0, 64, (2, 8)), collect_activations=True)
    ffn_l1(activations).backward()
    last = model.model.layers[-1].mlp
    assert last.gate_proj.weight.grad.abs().sum() > 0
    assert last.up_proj.weight.grad is None  # the term regularizes act(gate(x)), not act(gate(x)) * up(x)


def test_activation_substitution_swaps_every_ffn():
    model = SparseLlamaForCausalLM(TINY)
    model.set_activation("fatrelu", 0.05)
    assert model.config.hidden_act == "fatrelu" and model.config.hidden_act_param == 0.05
    assert all(isinstance(layer.mlp.act_fn, FATReLU) and layer.mlp.act_fn.threshold == 0.05
               for layer in model.model.layers)
