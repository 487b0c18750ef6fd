"""What a forward pass costs, read off the config: FLOPs of the text prefill, bytes read per decoded
token. The vision tower's FLOPs are `params.vision_flops`; these
functions use the same definition (2 FLOPs per multiply-add, in every matrix product; norms,
activations, rotary and bias additions left out).

    prefill_flops(config, L)          the decoder on an L-token prompt + the head on the last position
    decode_weight_bytes(config, b)    weights read once per new token (decoder layers, norm, head)

The KV cache's bytes per token are chapter 08's `figures.decoder.kv_cache_bytes`. Why these two:
a prompt is a stack of matrix products whose cost grows with L (compute-bound), while each new
token multiplies one row by every weight matrix once (memory-bound: the time is the bytes of the
weights over the memory bandwidth).
"""

from __future__ import annotations

from .config import Qwen25VLConfig
from .params import BYTES_PER_PARAMETER, text_counts


def prefill_flops(config: Qwen25VLConfig, length: int) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of the decoder on `length` prompt tokens, logits of the last one only.

    With D = hidden, I = MLP width, H query heads and G key/value heads of hd channels:
        linear     layers * 2 * L * (D*H*hd + 2*D*G*hd + H*hd*D + 3*D*I)   q, k, v, o, gate, up, down
        attention  layers * 4 * H*hd * L(L+1)/2                             causal: query i sees i+1 keys
        head       2 * D * vocab                                            only the last position predicts
    """
    t = config.text_config
    d, i, q, kv = t.hidden_size, t.intermediate_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    parts = {
        "linear": t.num_hidden_layers * 2 * length * (d * q + 2 * d * kv + q * d + 3 * d * i),
        "attention": t.num_hidden_layers * 4 * q * length * (length + 1) // 2,
        "head": 2 * d * t.vocab_size,
    }
    return sum(parts.values()), parts


def decode_weight_bytes(config: Qwen25VLConfig, dtype: str = "bfloat16") -> int:
    """Bytes of weights read to produce one new token: every decoder layer, the final norm and the
    head (vocab x D; for a tied head that is the embedding table). The embedding look-up reads one
    row (negligible); the KV cache read is left out (small beside the weights for short contexts)."""
    t, counts = config.text_config, text_counts(config)
    return (counts["decoder_layers"] + counts["norm"] + t.vocab_size * t.hidden_size) * BYTES_PER_PARAMETER[dtype]
