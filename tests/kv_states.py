"""`KVState`s over given keys and values, stored in a KV cache type (`runtime/kv_types.py`) by the reference twin
(`kernels/reference.kv_encode`): what the attention kernel tests read."""

import numpy as np

from hybridinfer.kernels import reference
from hybridinfer.kernels.block_args import NONE, AttentionWeights, KVState

NO_ROPE = np.zeros((1, 1), np.float32)  # cos, sin: the attention kernel reads none
# the attention weights `cpu_layer.attend` reads (biases, head norms) of a model without any
NO_EXTRAS = AttentionWeights(NONE, NONE.view(np.uint8).reshape(0, 0), NONE.view(np.uint8).reshape(0, 0),
                             np.float32(1e-5), np.float32(1.0))


def kv_state(keys, values, positions, sequences, n_head, type_k="f32", type_v="f32") -> KVState:
    """keys, values (n_seq, n_head_kv, n_ctx, head_dim) float32 stored as `type_k`, `type_v`; a scores scratch
    for n_head heads."""
    (k_cache, k_scales), (v_cache, v_scales) = reference.kv_encode(keys, type_k), reference.kv_encode(values, type_v)
    scores = np.empty((n_head, keys.shape[2]), np.float32)
    return KVState(NO_ROPE, NO_ROPE, np.asarray(positions, np.int64), np.asarray(sequences, np.int64), k_cache,
                   v_cache, k_scales, v_scales, scores)
