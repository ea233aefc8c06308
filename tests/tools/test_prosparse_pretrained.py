"""Starting the recipe from a GGUF: Q/K un-permutation, and the loaded model matches hybridinfer's forward pass."""

import numpy as np
import torch

from tools.prosparse.pretrained import load_gguf_model, permute_rope_rows, unpermute_rope_rows


def test_unpermute_restores_rotate_half_order():
    head_dim, n_heads = 8, 2
    hf = torch.arange(n_heads * head_dim, dtype=torch.float32)[:, None].repeat(1, 3)
    gguf = permute_rope_rows(hf, n_heads)
    # within each head, GGUF row 2j = HF row j and row 2j + 1 = HF row j + head_dim / 2
    assert gguf[:8, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert gguf[8:, 0].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]
    assert torch.equal(unpermute_rope_rows(gguf, n_heads), hf)


def test_loaded_gguf_model_matches_the_reference_forward(smollm_path):
    import hybridinfer

    torch.set_num_threads(2)
    model, tokenizer = load_gguf_model(str(smollm_path), max_positions=64)
    ids = [tokenizer.bos_id or 0] + tokenizer.encode(["The capital of France is Paris."])[0]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    reference = hybridinfer.load(str(smollm_path), n_ctx=64, backend="reference").logits(ids)
    assert np.abs(ours - reference).max() < 2e-3 * np.abs(reference).max()
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_exported_gguf_tokenizer_matches_hybridinfer(smollm_path, tmp_path):
    transformers = __import__("pytest").importorskip("transformers")
    from hybridinfer.model_file.gguf_file import GGUFFile
    from tools.prosparse.pretrained import gguf_corpus_tokenizer

    tokenizer = gguf_corpus_tokenizer(GGUFFile(str(smollm_path)))
    tokenizer.write_hf_files(str(tmp_path), 2048)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "def f(x):\n    \"\"\"Return  x² + 1.\"\"\"  # naïve 123"
    ids = tokenizer.encode([text])[0]
    assert hf(text, add_special_tokens=False).input_ids == ids
    assert hf.decode(ids) == text
    assert hf.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_id
