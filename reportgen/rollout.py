"""Attention rollout (Abnar & Zuidema 2020): how much each patch flows into the class token.

Per attention layer l (every `nn.MultiheadAttention` of the model, in the order they run) and per
input: the attention probabilities A_l (heads, T, T), recomputed here, because torchvision's
encoder (like most) calls its attention with `need_weights=False` and so never makes them:

    q = x W_q^T + b_q,  k = x W_k^T + b_k   (x: the query and key the module was called with)
    A_l = softmax(q_h k_h^T / sqrt(d_head)) per head h

in float64. Heads are fused by their mean (or max, `heads="max"`), the residual stream's identity
is added and every row renormalised, Â_l = (fuse(A_l) + I) / rowsum, and the rollout is the
product from the first layer to the last, R = Â_L ... Â_2 Â_1. Its class-token row over the
patch tokens (the first `prefix` tokens dropped, laid out on the token grid as tokens.py does) is
the map; a model without a class token gets the mean over all rows. The map is divided by its
max, like a Grad-CAM map, and drawn the same way.

What is refused (the note says which): attention with masks, added key/value biases or zero
attention (`bias_k`, `add_zero_attn`), cross-attention (a key that is not the query), and
sequences that are not a square grid of patches after at most tokens.MAX_PREFIX leading tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEAD_FUSIONS = ("mean", "max")


def attention_probabilities(module: nn.MultiheadAttention, query: torch.Tensor,
                            key: torch.Tensor | None = None) -> torch.Tensor:
    """(N, heads, T, S) float64 softmax(q k^T / sqrt(d)) of `module` called on `query` (and `key`,
    the query when None), batch first or not as the module is."""
    key = query if key is None else key
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    embed, heads = module.embed_dim, module.num_heads
    head_dim = embed // heads
    if module.in_proj_weight is not None:
        weight_q, weight_k = module.in_proj_weight[:embed], module.in_proj_weight[embed:2 * embed]
    else:
        weight_q, weight_k = module.q_proj_weight, module.k_proj_weight
    bias = module.in_proj_bias
    q = query.double() @ weight_q.double().T
    k = key.double() @ weight_k.double().T
    if bias is not None:
        q = q + bias[:embed].double()
        k = k + bias[embed:2 * embed].double()
    batch, tokens, sources = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, sources, heads, head_dim).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)


def fused(probabilities: torch.Tensor, heads: str = "mean") -> torch.Tensor:
    """(N, H, T, T) -> (N, T, T): heads fused (mean or max), the identity added, rows renormalised."""
    if heads not in HEAD_FUSIONS:
        raise ValueError(f"heads must be one of {HEAD_FUSIONS}, not {heads!r}")
    joined = probabilities.mean(dim=1) if heads == "mean" else probabilities.amax(dim=1)
    joined = joined + torch.eye(joined.shape[-1], dtype=joined.dtype, device=joined.device)
    return joined / joined.sum(dim=-1, keepdim=True)


def rollout_map(rolled: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, T, T) rollout -> (N, h, w) maps in 0..1: the class token's row (the mean of all rows
    without one, `prefix` 0) over the patch tokens, divided by its max."""
    rows = rolled[:, 0, prefix:] if prefix else rolled.mean(dim=1)
    maps = rows.reshape(rows.shape[0], *grid)
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-300).reshape(-1, 1, 1)
    return maps / peak


def call_arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> dict[str, object]:
    """`nn.MultiheadAttention.forward`'s arguments by name, from a call's positional and keyword ones."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    return {**dict(zip(names, args)), **kwargs}


def usable(module: nn.MultiheadAttention, arguments: dict[str, object]) -> str:
    """Why a call of `module` with `arguments` (`call_arguments`) cannot be rolled out ("" when it can)."""
    if module.bias_k is not None or module.add_zero_attn:
        return "its attention adds key/value biases or a zero attention slot"
    query, key = arguments.get("query"), arguments.get("key")
    if not isinstance(query, torch.Tensor) or query.dim() != 3:
        return "its attention was not called with a (batch, tokens, features) query"
    if key is not query and not (isinstance(key, torch.Tensor) and key.shape == query.shape
                                 and torch.equal(key, query)):
        return "its attention is not self-attention (the key is not the query)"
    if any(arguments.get(name) is not None for name in ("key_padding_mask", "attn_mask")) or arguments.get("is_causal"):
        return "its attention is called with a mask"
    return ""
