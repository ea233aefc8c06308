"""Activation predictors: small per-layer networks that guess which FFN neurons fire for a token.

    model.py               PredictorSet: logits = fc2 · ReLU(fc1 · x) per layer, active iff logit >= threshold
    file.py                the predictor file (GGUF): save_predictors / load_predictors (checks the model)
    collect.py             run the model over a corpus, stream (residual, active mask) rows to memory-mapped files
    train.py               weighted-BCE training per layer, early stopping, fixed or automatic rank
    calibrate.py           per-layer thresholds reaching a target recall on held-out tokens
    metrics.py             recall, predicted and true sparsity, frequency-prior baseline, size share
    powerinfer_import.py   PowerInfer's predictor directories and PowerInfer GGUF fc1/fc2 tensors

The command line is `hybridinfer predictors train / import / info` (hybridinfer/cli/predictors_cmd.py).
"""
