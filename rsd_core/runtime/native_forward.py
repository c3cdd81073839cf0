"""A native forward for the Llama family (Llama, Mistral, Qwen2, Qwen2.5, Qwen3) over per-slot KV caches.

Built from the checkpoint's own weights as transformers loaded them, with the work per layer cut to
what the math needs: one fused QKV projection, one fused gate/up projection, RoPE from a table
computed once by the model's own rotary embedding (so every RoPE scaling type transformers knows
gives the same angles), K/V written straight into each sequence's slot at that slot's length, and
attention that reads each slot up to its own length without copying K/V per head (SDPA with grouped-query
heads; where a mask would send SDPA to its math kernel, on CUDA, ``grouped_attention``). Every other
architecture keeps the transformers path (``runtime/cached_model.py``).

On CPU the fused weights are kept transposed (``[in, out]``), the layout whose one-row product runs
nearest the memory bandwidth there; the transformers modules are re-pointed at views of the fused
tensors, so the weights are not held twice.

Example:
    >>> fwd = NativeForward.build(model, max_len=4096)                    # doctest: +SKIP
    >>> logits = fwd(ids, slots=[0], starts=[0], cache=cache)            # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsd_core.runtime.slots import SlotCache

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_POSITION_DEPENDENT_ROPE = ("dynamic", "longrope")  # angles that change with the sequence's length


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def native_unsupported(model: Any, max_len: int) -> str | None:
    """Why the native forward cannot run this model (None: it can)."""
    cfg = _text_config(model)
    if getattr(cfg, "model_type", None) not in FAMILIES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(FAMILIES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    if (window is not None and window < max_len and (getattr(cfg, "use_sliding_window", True)
                                                     or "sliding_attention" in layer_types)):
        return f"sliding-window attention ({window} < {max_len} cache columns)"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in _POSITION_DEPENDENT_ROPE:
        return f"RoPE type {rope.get('rope_type', rope.get('type'))!r} (its angles depend on the length)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "not laid out as transformers' Llama family (model.layers, model.rotary_emb)"
    for layer in inner.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            if type(lin) is not nn.Linear or not lin.weight.is_floating_point() or lin.weight.device.type == "meta":
                return f"{type(lin).__name__} projections (quantized or offloaded weights)"
    if len({p.device for p in model.parameters()}) != 1:
        return "weights spread over several devices"
    return None


class _Weight:
    """A projection's weight (and bias) in the layout its device multiplies fastest."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], transposed: bool):
        w = torch.cat([x.detach() for x in weights], 0) if len(weights) > 1 else weights[0].detach()
        self.transposed = transposed
        self.w = w.t().contiguous() if transposed else w.contiguous()  # [in, out] or [out, in]
        self.b = None
        if any(b is not None for b in biases):
            self.b = torch.cat([(b.detach() if b is not None else w.new_zeros(x.shape[0]))
                                for b, x in zip(biases, weights)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            y = x @ self.w
            return y + self.b if self.b is not None else y
        return F.linear(x, self.w, self.b)

    def view(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the fused ``[out, in]`` matrix, as a view (no copy)."""
        return self.w[:, start:stop].t() if self.transposed else self.w[start:stop]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalised in fp32, cast back, then scaled. (F.rms_norm is no faster on CPU.)"""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


FLEX_BLOCK = 128  # the K/V block FlexAttention skips or reads whole
_compiled_flex: Any = None


def flex_attention_fn(device: torch.device) -> Any:
    """FlexAttention as it should be called here: compiled once on CUDA (a fused kernel, which a CUDA graph
    can capture); inside a compiled region, or off CUDA, the plain function (on CPU its reference version,
    for tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def length_block_mask(pos: torch.Tensor, L: int) -> Any:
    """A FlexAttention block mask for one query per row: row r reads columns ``0..pos[r]`` of ``L`` (a multiple
    of ``FLEX_BLOCK``); whole blocks past its length are not read at all. Built on the device from ``pos``
    (no host work: a CUDA graph can capture it)."""
    from torch.nn.attention.flex_attention import BlockMask

    R, n = pos.shape[0], L // FLEX_BLOCK
    blocks = (pos // FLEX_BLOCK + 1).to(torch.int32).view(R, 1, 1)
    order = torch.arange(n, dtype=torch.int32, device=pos.device).view(1, 1, 1, n).expand(R, 1, 1, n).contiguous()

    def upto_length(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return kv <= pos[b]

    return BlockMask.from_kv_blocks(blocks, order, BLOCK_SIZE=FLEX_BLOCK, mask_mod=upto_length, seq_lengths=(1, L))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of ``q`` [B, H, N, D] over ``k``/``v`` [B, K, L, D] (grouped-query heads: query head h reads
    K/V head h // (H / K)) where ``mask`` [B, 1, N, L] is True, without repeating K/V per head: the query
    heads of one group are one matrix against their K/V head. On CUDA, SDPA with a mask and grouped heads
    falls back to its math kernel, which copies K and V out to every head (its flash kernel takes no mask,
    its memory-efficient one no grouped heads)."""
    B, H, N, D = q.shape
    K, L = k.shape[1], k.shape[2]
    qg = q.reshape(B, K, (H // K) * N, D) * D ** -0.5
    scores = (qg @ k.transpose(-1, -2)).view(B, K, H // K, N, L)  # [B, K, G, N, L]
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype).view(B, K, (H // K) * N, L)
    return (probs @ v).view(B, H, N, D)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Layer:
    def __init__(self, layer: Any, transposed: bool):
        a, m = layer.self_attn, layer.mlp
        self.qkv = _Weight([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight],
                           [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], transposed)
        self.o = _Weight([a.o_proj.weight], [a.o_proj.bias], transposed)
        self.gate_up = _Weight([m.gate_proj.weight, m.up_proj.weight], [m.gate_proj.bias, m.up_proj.bias], transposed)
        self.down = _Weight([m.down_proj.weight], [m.down_proj.bias], transposed)
        self.split = (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features)
        self.inter = m.gate_proj.out_features
        self.in_norm, self.post_norm = layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()
        self.eps = float(getattr(layer.input_layernorm, "variance_epsilon", getattr(layer.input_layernorm, "eps", 1e-6)))
        q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)  # Qwen3: RMSNorm per head
        self.q_norm = q_norm.weight.detach() if q_norm is not None else None
        self.k_norm = k_norm.weight.detach() if k_norm is not None else None
        # The transformers modules now read views of the fused tensors: one copy of the weights.
        q, k, _ = self.split
        for lin, (lo, hi) in ((a.q_proj, (0, q)), (a.k_proj, (q, q + k)), (a.v_proj, (q + k, sum(self.split)))):
            lin.weight.data = self.qkv.view(lo, hi)
        a.o_proj.weight.data = self.o.view(0, a.o_proj.out_features)
        m.gate_proj.weight.data = self.gate_up.view(0, self.inter)
        m.up_proj.weight.data = self.gate_up.view(self.inter, 2 * self.inter)
        m.down_proj.weight.data = self.down.view(0, m.down_proj.out_features)


class NativeForward:
    """The model's forward over a ``SlotCache``: logits for new tokens written at each slot's length."""

    def __init__(self, model: Any, max_len: int, attention: str | None = None):
        """``attention``: how masked attention runs. ``"sdpa"``; ``"grouped"`` (``grouped_attention``, for
        grouped-query heads: the default on CUDA, where SDPA would fall back to its math kernel; on CPU SDPA
        is faster); ``"flex"``: the device loop's one-token decode through FlexAttention, each row reading
        its slot only up to its own length (other forwards as ``"grouped"``)."""
        if attention not in (None, "sdpa", "grouped", "flex"):
            raise ValueError(f"attention must be 'sdpa', 'grouped' or 'flex', not {attention!r}")
        why = native_unsupported(model, max_len)
        if why is not None:
            raise ValueError(f"the native forward cannot run this model: {why}")
        cfg, inner = _text_config(model), model.model
        emb = inner.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        transposed = self.device.type == "cpu"
        self.embed = emb.detach()
        self.layers = [_Layer(layer, transposed) for layer in inner.layers]
        self.norm = inner.norm.weight.detach()
        self.norm_eps = float(getattr(inner.norm, "variance_epsilon", getattr(inner.norm, "eps", 1e-6)))
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == emb.data_ptr()
        self.lm_head = _Weight([head.weight], [getattr(head, "bias", None)], transposed)
        if not tied:
            head.weight.data = self.lm_head.view(0, head.out_features)
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.vocab = int(head.out_features)
        self.attention = attention or ("grouped" if self.device.type == "cuda" else "sdpa")
        self.max_len = max_len  # the RoPE table's positions (and so the longest sequence)
        self._rotary = inner.rotary_emb
        self.cos = self.sin = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self.rope_upto(min(max_len, 4096))

    def rope_upto(self, n: int) -> None:
        """The RoPE table ([positions, head_dim]) for at least ``n`` positions, computed by the model's own
        rotary embedding (so every scaling type it knows gives its angles)."""
        if n <= self.cos.shape[0]:
            return
        n = min(self.max_len, max(n, 2 * self.cos.shape[0]))
        with torch.inference_mode():
            pos = torch.arange(n, device=self.device)[None]
            cos, sin = self._rotary(self.embed[:1][None], pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)

    @classmethod
    def build(cls, model: Any, max_len: int = 4096) -> NativeForward:
        """The model's native forward, built once per model: generators that share a model (the same
        checkpoint as draft and target) share its fused weights too; each keeps its own cache."""
        fwd = getattr(model, "_rsd_native_forward", None)
        if not isinstance(fwd, NativeForward) or fwd.max_len < max_len:
            fwd = cls(model, max_len)
            model._rsd_native_forward = fwd
        return fwd

    def new_cache(self, slots: int = 1) -> SlotCache:
        return SlotCache(len(self.layers), self.kv_heads, self.head_dim, self.max_len, self.dtype, self.device, slots)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, slots: list[int], starts: list[int], cache: SlotCache,
                 last: list[int] | None = None) -> torch.Tensor:
        """Logits for ``ids`` ([B, N]; row b's tokens go at positions ``starts[b]..``, right-padded).

        ``last``: return only the logits at these column indices, one per row ([B, V]); otherwise [B, N, V].
        Writes K/V for every column, padding included: a padded column lies past its slot's length, so
        it is never read and the next write there overwrites it.
        """
        B, N = ids.shape
        dev = self.device
        start = torch.tensor(starts, device=dev)
        pos = start[:, None] + torch.arange(N, device=dev)  # [B, N]
        L = max(starts) + N
        self.rope_upto(L)
        contiguous = slots == list(range(slots[0], slots[0] + B))
        slot_t = torch.tensor(slots, device=dev)
        mask = None
        causal = False
        if B == 1 and N > 1 and starts[0] == 0:
            causal = True
        elif B > 1 or N > 1:
            mask = (torch.arange(L, device=dev)[None, None, :] <= pos[:, :, None])[:, None]  # [B, 1, N, L]
        rows = slot_t[:, None].expand(B, N)
        x = self._layers(self.embed[ids], pos, rows, slot_t if not contiguous else None, slots[0], L, mask, causal,
                         cache.keys, cache.values, write_at=(slots[0], starts[0]) if B == 1 else None)
        if last is not None:
            x = x[torch.arange(B, device=dev), torch.tensor(last, device=dev)]
        return self.lm_head(_rms_norm(x, self.norm, self.norm_eps))

    def decode_slots(self, tok: torch.Tensor, pos: torch.Tensor, cols: torch.Tensor, L: int,
                     cache: SlotCache, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [R, V] for one new token per row: ``tok[r]`` at position ``pos[r]`` of slot ``slots[r]``
        (default: row r is slot r), its K/V written at column ``cols[r]`` (the slot's scratch column for a
        row with nothing to write). Reads columns ``:L`` of each row's slot, up to its own position.
        Device tensors only, no host work and fixed shapes: a CUDA graph can capture it
        (``runtime/device_loop.py``)."""
        R = tok.shape[0]
        p = pos[:, None]
        rows = (torch.arange(R, device=self.device) if slots is None else slots)[:, None]
        mask: Any
        # FlexAttention on CUDA, or eagerly (its reference version: tests); inductor's CPU lowering of it
        # fails inside the compiled token body, which then keeps the dense mask.
        flex_here = self.device.type == "cuda" or not torch.compiler.is_compiling()
        if self.attention == "flex" and L % FLEX_BLOCK == 0 and flex_here:
            mask = length_block_mask(pos, L)
        else:
            mask = (torch.arange(L, device=self.device)[None, None, :] <= p[:, :, None])[:, None]  # [R, 1, 1, L]
        x = self._layers(self.embed[tok[:, None]], p, rows, slots, 0, L, mask, False, cache.keys, cache.values,
                         cols=cols[:, None])
        return self.lm_head(_rms_norm(x[:, 0], self.norm, self.norm_eps))

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, slot_t: torch.Tensor | None, first: int,
                L: int, mask: Any, causal: bool, kcs: list[torch.Tensor],
                vcs: list[torch.Tensor], cols: torch.Tensor | None = None,
                write_at: tuple[int, int] | None = None) -> torch.Tensor:
        """``cols``: where each new token's K/V go (default: at its position). ``write_at``: (slot, start)
        of a batch of one sequence, whose tokens then go in by slicing (cheaper than indexing on CPU)."""
        B, N = rows.shape
        cols = pos if cols is None else cols
        H, K, D = self.heads, self.kv_heads, self.head_dim
        q_end, k_end = H * D, (H + K) * D
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # [B, N, 1, D]
        for layer, kc, vc in zip(self.layers, kcs, vcs):
            h = _rms_norm(x, layer.in_norm, layer.eps)
            qkv = layer.qkv(h)
            if layer.q_norm is None:  # q and k rotated together: one rotation per layer
                qk = _rotate(qkv[..., :k_end].view(B, N, H + K, D), cos, sin)
                q, k = qk[:, :, :H], qk[:, :, H:]
            else:  # Qwen3: each normalised per head first
                assert layer.k_norm is not None
                q = _rotate(_rms_norm(qkv[..., :q_end].view(B, N, H, D), layer.q_norm, layer.eps), cos, sin)
                k = _rotate(_rms_norm(qkv[..., q_end:k_end].view(B, N, K, D), layer.k_norm, layer.eps), cos, sin)
            v = qkv[..., k_end:].view(B, N, K, D)
            if write_at is not None:
                slot, at = write_at
                kc[slot, :, at:at + N] = k[0].transpose(0, 1)
                vc[slot, :, at:at + N] = v[0].transpose(0, 1)
            else:
                kc[rows, :, cols] = k  # each slot's new tokens at its own length
                vc[rows, :, cols] = v
            if slot_t is None:  # the batch's slots are consecutive: a view, no gather
                keys, values = kc[first:first + B, :, :L], vc[first:first + B, :, :L]
            else:
                keys, values = kc[slot_t, :, :L], vc[slot_t, :, :L]
            if mask is not None and not isinstance(mask, torch.Tensor):  # a FlexAttention block mask
                attn = flex_attention_fn(self.device)(q.transpose(1, 2), keys, values, block_mask=mask,
                                                      enable_gqa=H != K)
            elif mask is not None and H != K and self.attention != "sdpa":
                attn = grouped_attention(q.transpose(1, 2), keys, values, mask)
            else:
                attn = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                                      is_causal=causal, enable_gqa=H != K)
            x = x + layer.o(attn.transpose(1, 2).reshape(B, N, H * D))
            gate_up = layer.gate_up(_rms_norm(x, layer.post_norm, layer.eps))
            x = x + layer.down(F.silu(gate_up[..., :layer.inter]) * gate_up[..., layer.inter:])
        return x
