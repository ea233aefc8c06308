"""The ProSparse recipe at small scale: train an activation-sparse LLaMA-architecture model.

ProSparse's three steps, on a tiny model trained from scratch or on a pretrained LLaMA GGUF:
  1. activation substitution: SiLU -> ReLU in every FFN, continued training;
  2. progressive sparsity regularization: next-token loss + λ·L1 of the FFN activation outputs, λ constant
     during a warm-up stage then rising along a quarter sine within each later stage;
  3. activation threshold shifting: ReLU -> FATReLU_T, T chosen by measuring sparsity against held-out loss.
The result is exported as a Hugging Face directory laid out like a published ProSparse checkpoint.

Files, one concern each (the corpus itself, stdlib docstrings/comments + user text files with a fixed
train/validation/test split, lives in hybridinfer/text/corpus.py, shared with the engine):
  tokenizer_training.py  LLaMA-like SentencePiece BPE tokenizer (byte fallback, unk/bos/eos = 0/1/2)
  data.py                token streams, seeded training batches, evaluation windows
  model.py               small LLaMA with SiLU/ReLU/FATReLU FFNs, HF parameter names, exposes act(gate(x))
  schedule.py            λ stages and the learning-rate schedule
  train.py               training loop (AdamW, cosine LR, L1 term), forkable runs, checkpoints
  evaluate.py            held-out loss, per-layer sparsity, per-neuron activation counts
  threshold.py           FATReLU threshold sweep
  export.py              Hugging Face ProSparse-layout directory
  pretrained.py          start from a GGUF (hybridinfer's loader, Q/K un-permuted)
  recipe.py              the four variants at the same budget, end to end -> metrics.json
  report.py              markdown + PNG generated from metrics.json
  build_reference.py     the fixed reference build (`make reference-model`)
  __main__.py            `python -m tools.prosparse train|report|build-reference`
"""
