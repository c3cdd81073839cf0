"""Local transformers models: per-sequence KV caches, batched over sequences of any length.

Each sequence keeps its own token ids and its own KV tensors. A batched call left-pads the cached
prefixes and the new chunks into one padded batch (masked, with explicit position ids), runs the
chunk and then one token at a time, and cuts each sequence's cache back out, without the padding.
So no model ever re-reads a prefix, a rejected step is undone by dropping cache columns, and tokens
handed over from another model are read lazily, in one chunk, the next time this model is called.

Example:
    >>> gen = HFGenerator.from_pretrained("path/to/model")            # doctest: +SKIP
    >>> gen.start(0, gen.render_prompt([{"role": "user", "content": "2+2?"}]))  # doctest: +SKIP
    >>> gen.generate_step([0], budgets=[64])[0].text                   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from rsd_core.accounting import FlopCounter
from rsd_core.backends.base import Prompt, Step
from rsd_core.backends.fast import FastCachedModel, drop_tail, fast_path_supported
from rsd_core.config import SamplingConfig
from rsd_core.constraints import ConstrainedRows, Cursor
from rsd_core.errors import ModelLoadError, PromptTooLongError
from rsd_core.events import ModelUsage
from rsd_core.messages import with_tools_in_system_turn
from rsd_core.sampling import sample_next

# --------------------------------------------------------------------------- loading (one place)


def resolve_dtype(dtype: str | torch.dtype | None, device_map: Any) -> str | torch.dtype:
    """``"auto"`` keeps the checkpoint's dtype on accelerators but uses fp32 on CPU (fp16 is slow there)."""
    if dtype in (None, "auto"):
        on_cpu = device_map in (None, "cpu") or (isinstance(device_map, torch.device) and device_map.type == "cpu")
        return torch.float32 if on_cpu else "auto"
    if isinstance(dtype, str):
        try:
            return getattr(torch, dtype) if dtype != "auto" else dtype
        except AttributeError:
            raise ValueError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'") from None
    return dtype


def load_pretrained(
    auto_cls: Any,
    name_or_path: str,
    *,
    device_map: Any = None,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer exactly as transformers loads them (hub id or local path), with a clear error.

    A local path is checked first and never looked up on the hub (a typo must not turn into a download).
    A local ``.gguf`` file loads as transformers loads GGUF (``gguf_file=``; needs the ``gguf`` package):
    the weights are de-quantized, the tokenizer and chat template come from the file.
    """
    shown, local = name_or_path, Path(name_or_path)
    if local.exists():
        if local.is_file() and local.suffix == ".gguf":
            name_or_path, kwargs["gguf_file"] = str(local.parent), local.name
        else:
            check_local_checkpoint(local)
        kwargs.setdefault("local_files_only", True)
    if kwargs.get("gguf_file"):
        require_gguf(shown)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                            local_files_only=kwargs.get("local_files_only", False),
                                            gguf_file=kwargs.get("gguf_file"))
        model = auto_cls.from_pretrained(
            name_or_path,
            device_map=device_map,
            dtype=resolve_dtype(dtype, device_map),
            trust_remote_code=trust_remote_code,
            use_safetensors=kwargs.pop("use_safetensors", None),
            **kwargs,
        )
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        # (pickle checkpoints load with weights_only=True: one that holds code fails here, unrun)
        raise ModelLoadError(f"could not load {shown!r} with {auto_cls.__name__}: {e}") from e
    model.eval()
    return model, tok


def require_gguf(name: str) -> None:
    """transformers reads GGUF through the ``gguf`` package: say so before it fails deep inside."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{name!r} is a GGUF checkpoint: install the 'gguf' package to load it (pip install gguf)")


def check_local_checkpoint(path: Path) -> None:
    """A folder holding a readable ``config.json``, or ``ModelLoadError`` saying what is wrong."""
    if not path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a file; a checkpoint is a folder with config.json and weights, "
                             "or a .gguf file")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json: it is not a transformers checkpoint")
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{str(cfg)!r} is not valid JSON ({e}): the checkpoint is damaged") from None


def pop_load_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the ``from_pretrained`` options (device_map, dtype, trust_remote_code) out of ``kwargs``."""
    return {k: kwargs.pop(k) for k in ("device_map", "dtype", "trust_remote_code") if k in kwargs}


def eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for e in (eos if isinstance(eos, list) else [eos]):
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def context_length(model: PreTrainedModel) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", None) or 1 << 30)


# --------------------------------------------------------------------------- step boundaries


class StepBoundary:
    """Tells, on device and for a whole batch at once, whether a sampled token ends a step.

    A token ends a step when its text contains a delimiter, when a delimiter straddles it and the
    token before it in the same step (``"\\n"`` + ``"\\n"``), or when it is an end-of-sequence token.
    Built once per tokenizer: a lookup table over the vocabulary, so there is no per-token decoding.
    """

    def __init__(self, tokenizer: Any, delimiters: list[str], eos_ids: set[int], vocab_size: int, device: torch.device):
        n = max(vocab_size, len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        texts += [""] * (n - len(texts))
        self.none = n  # index of a "no previous token" sentinel: row n of every table is False
        contains = torch.zeros(n + 1, dtype=torch.bool)
        eos = torch.zeros(n + 1, dtype=torch.bool)
        for i, t in enumerate(texts):
            contains[i] = any(d in t for d in delimiters)
        for e in eos_ids:
            if e < n:
                eos[e] = True
        pairs = []
        for d in delimiters:
            for k in range(1, len(d)):
                ends = torch.tensor([t.endswith(d[:k]) for t in texts] + [False])
                starts = torch.tensor([t.startswith(d[k:]) for t in texts] + [False])
                if ends.any() and starts.any():
                    pairs.append((ends.to(device), starts.to(device)))
        self.contains, self.eos, self.pairs = contains.to(device), eos.to(device), pairs

    def ends(self, prev: torch.Tensor, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(step ended, sequence ended) for each row."""
        is_eos = self.eos[tok]
        ended = self.contains[tok] | is_eos
        for ends_with, starts_with in self.pairs:
            ended = ended | (ends_with[prev] & starts_with[tok])
        return ended, is_eos


# --------------------------------------------------------------------------- per-sequence caches


@dataclass
class SeqState:
    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, [1, heads, n_cached, dim]
    n_cached: int = 0
    own_unfed: int = 0  # trailing pending tokens this model sampled itself (not counted as prefill)
    usage: ModelUsage = field(default_factory=ModelUsage)


def _cache_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


class CachedModel:
    """A transformers model run over many sequences, each with its own KV cache."""

    def __init__(self, model: PreTrainedModel, pad_id: int, keep_last_logits_only: bool = True):
        self.model = model
        self.pad_id = pad_id
        self.flops = FlopCounter.for_model(model)
        self.states: dict[int, SeqState] = {}
        params = inspect.signature(model.forward).parameters
        self._logits_kw = {"logits_to_keep": 1} if keep_last_logits_only and "logits_to_keep" in params else {}

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # sequence bookkeeping -------------------------------------------------
    def new(self, seq: int, ids: list[int]) -> None:
        self.states[seq] = SeqState(list(ids))

    def append(self, seq: int, ids: list[int]) -> None:
        self.states[seq].ids.extend(ids)

    def truncate(self, seq: int, n_remove: int) -> None:
        s = self.states[seq]
        keep = drop_tail(s, n_remove)
        if s.n_cached > keep:  # roll the cache back by index
            s.kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in s.kv or []]
            s.n_cached = keep

    def release(self, seq: int) -> None:
        self.states.pop(seq, None)

    def count_scored(self, seq: int, n_tokens: int) -> None:
        """A PRM's share of the paper's FLOPs count: the step tokens it scored."""
        self.states[seq].usage.paper_flops += self.flops.weights(n_tokens)

    # the batched forward ----------------------------------------------------
    @torch.inference_mode()
    def run(
        self,
        seqs: list[int],
        *,
        budgets: list[int] | None = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        boundary: StepBoundary | None = None,
        sync_every: int = 1,
        all_positions: bool = False,
        vocab_limit: int | None = None,
        constrained: ConstrainedRows | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Read every sequence's pending tokens, then (with ``budgets``) sample until each step ends.
        ``constrained`` picks the tokens of the rows (indices into ``seqs``) that follow a grammar.

        Returns (logits, generated tokens per row, ended-at-eos per row). Logits are those after the
        last pending token ([B, V]), or at every pending position ([B, N, V], left-padded) when
        ``all_positions`` is set.
        """
        states = [self.states[s] for s in seqs]
        dev = self.device
        past = [s.n_cached for s in states]
        chunks = [s.ids[s.n_cached :] for s in states]
        if any(not c for c in chunks):
            raise RuntimeError("internal: a sequence has nothing new to read")
        B, P, N = len(states), max(past), max(len(c) for c in chunks)
        # Left-pad each chunk so every row's newest token sits in the last column.
        ids = torch.tensor([[self.pad_id] * (N - len(c)) + c for c in chunks], device=dev)
        mask = torch.zeros(B, P + N, dtype=torch.long)
        pos = torch.zeros(B, N, dtype=torch.long)
        for i, (p, c) in enumerate(zip(past, chunks)):
            mask[i, P - p : P] = 1
            mask[i, P + N - len(c) :] = 1
            pos[i, N - len(c) :] = torch.arange(p, p + len(c))
        mask, pos = mask.to(dev), pos.to(dev)
        cache = self._stack_past(states, P)
        kw = {} if all_positions else self._logits_kw
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, **kw)
        # Sequence classifiers (outcome reward models) already pool to [B, labels].
        logits = out.logits if all_positions or out.logits.dim() == 2 else out.logits[:, -1]
        for s, p, c in zip(states, past, chunks):
            s.usage.prefill_tokens += len(c) - s.own_unfed
            s.usage.flops += self.flops.forward(len(c), p)
            s.usage.calls += 1
            s.own_unfed = 0

        gen_lists: list[list[int]] = [[] for _ in seqs]
        eos_flags = [False] * B
        n_gen_list = [0] * B
        if budgets:
            assert sampling is not None and boundary is not None
            gen, n_gen, eos = self._decode(logits, cache, mask, pos[:, -1] + 1, budgets, sampling, generator, boundary,
                                           sync_every, vocab_limit or logits.shape[-1], constrained)
            n_gen_list = n_gen.tolist()
            gen_rows = gen.tolist()
            eos_flags = eos.tolist()
            gen_lists = [row[:n] for row, n in zip(gen_rows, n_gen_list)]

        # Cut each row's cache out of the padded batch: [its past] + [its chunk and fed decode tokens].
        layers = _cache_layers(cache)
        for i, (s, p, c) in enumerate(zip(states, past, chunks)):
            fed = max(0, n_gen_list[i] - 1)  # the last sampled token is not read yet
            if B == 1:
                s.kv = layers if P + N + fed == layers[0][0].shape[2] else [(k[:, :, : P + N + fed], v[:, :, : P + N + fed]) for k, v in layers]
            else:
                idx = torch.cat([torch.arange(P - p, P), torch.arange(P + N - len(c), P + N + fed)]).to(dev)
                s.kv = [(k[i : i + 1].index_select(2, idx), v[i : i + 1].index_select(2, idx)) for k, v in layers]
            s.n_cached = len(s.ids) + fed
            if gen_lists[i]:
                s.ids.extend(gen_lists[i])
                s.own_unfed = 1
                s.usage.decode_tokens += len(gen_lists[i])
                s.usage.paper_flops += self.flops.weights(len(gen_lists[i]))
                s.usage.flops += self.flops.forward(fed, p + len(c))
        return logits, gen_lists, eos_flags

    def _stack_past(self, states: list[SeqState], P: int) -> DynamicCache:
        if P == 0:
            return DynamicCache()
        if len(states) == 1:
            return DynamicCache(ddp_cache_data=states[0].kv)
        n_layers = len(next(s.kv for s in states if s.kv))
        data = []
        for layer in range(n_layers):
            ref = next(s.kv[layer][0] for s in states if s.kv)
            k = ref.new_zeros((len(states), ref.shape[1], P, ref.shape[3]))
            v = torch.zeros_like(k)
            for i, s in enumerate(states):
                if s.n_cached:
                    k[i, :, P - s.n_cached :] = s.kv[layer][0][0]
                    v[i, :, P - s.n_cached :] = s.kv[layer][1][0]
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data)

    def _decode(self, logits, cache, mask, next_pos, budgets, sampling, generator, boundary, sync_every, limit,
                constrained=None):
        dev = logits.device
        B, max_budget = logits.shape[0], max(budgets)
        budget_t = torch.tensor(budgets, device=dev)
        gen = torch.full((B, max_budget), self.pad_id, dtype=torch.long, device=dev)
        n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        eos = torch.zeros(B, dtype=torch.bool, device=dev)
        prev = torch.full((B,), boundary.none, dtype=torch.long, device=dev)
        for t in range(max_budget):
            tok = sample_next(logits[:, :limit], sampling, generator)  # ids past the tokenizer are padding
            if constrained is not None and constrained.rows:  # a host sync per token, only for these rows
                tok = constrained.pick(logits[:, :limit], tok, (~done).tolist(), sampling, generator)
            active = ~done
            gen[:, t] = tok
            n_gen += active
            step_end, is_eos = boundary.ends(prev, tok)
            eos |= active & is_eos
            done |= active & (step_end | (n_gen >= budget_t))
            prev = tok
            if (t + 1) % sync_every == 0 and bool(done.all()):
                break
            if t + 1 == max_budget:
                break
            feed = (~done).long()
            mask = torch.cat([mask, feed[:, None]], dim=1)
            out = self.model(
                input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                past_key_values=cache, use_cache=True, **self._logits_kw,
            )
            next_pos = next_pos + feed
            logits = out.logits[:, -1]
        # Rows that finished before a later sync may have sampled extra tokens: n_gen already excludes them.
        return gen, n_gen, eos


def render_prompt(tokenizer: Any, prompt: Prompt, tools: list[dict[str, Any]] | None, name: str,
                  context_length: int, reply_prefix: str = "") -> list[int]:
    """Token ids of a raw text prompt, or of a chat through the tokenizer's chat template (with tools).

    ``reply_prefix`` is text the reply is forced to start with; it is tokenized together with the
    rendered prompt, exactly as if the model had written it.

    Checked before any model work: empty prompts, chats for models with no template, and prompts
    that leave no room in the context raise clear errors.
    """
    if isinstance(prompt, str):
        if tools:
            raise ValueError("tools need a chat prompt (a list of messages), not a raw string")
        ids = tokenizer(prompt + reply_prefix).input_ids
    else:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{name} has no chat template: pass a raw text prompt instead of messages")
        text = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
        if tools and text == tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True):
            # The template ignores tools (SmolLM2's does): state them in the system turn instead.
            text = tokenizer.apply_chat_template(with_tools_in_system_turn(prompt, tools), tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text + reply_prefix, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    if len(ids) >= context_length:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens but {name} reads at most {context_length}")
    return ids


# --------------------------------------------------------------------------- the generator


class HFGenerator:
    """A transformers causal LM behind the generator contract (see ``backends.base.Generator``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        sampling: SamplingConfig | None = None,
        step_delimiters: list[str] | None = None,
        name: str | None = None,
        sync_every: int | None = None,
        fast: bool | None = None,
        max_len: int = 4096,
    ):
        """``fast``: the static-cache, CUDA-graph decode path (``backends/fast.py``); by default on for
        supported models on CUDA. ``max_len``: its cache columns per sequence slot."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self.sampling = sampling or SamplingConfig()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = pad if pad is not None else 0
        on_gpu = model.get_input_embeddings().weight.device.type == "cuda"
        use_fast = fast if fast is not None else (on_gpu and fast_path_supported(model))
        self.cached: CachedModel | FastCachedModel = (
            FastCachedModel(model, pad, max_len=max_len) if use_fast else CachedModel(model, pad)
        )
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.context_length = context_length(model)
        self._delimiters = list(step_delimiters or ["\n\n"])
        self._boundary: StepBoundary | None = None
        # On CPU a host sync is free; on an accelerator, check for "all rows done" every few tokens.
        self.sync_every = sync_every or (1 if self.cached.device.type == "cpu" else 8)
        self._generator: torch.Generator | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFGenerator:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    # configuration -----------------------------------------------------------
    def set_step_delimiters(self, delimiters: list[str]) -> None:
        if delimiters != self._delimiters:
            self._delimiters, self._boundary = list(delimiters), None

    @property
    def boundary(self) -> StepBoundary:
        if self._boundary is None:
            vocab = self.model.get_input_embeddings().weight.shape[0]
            self._boundary = StepBoundary(self.tokenizer, self._delimiters, self.eos_ids, vocab, self.cached.device)
        return self._boundary

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self._generator = None
        else:
            self._generator = torch.Generator(device=self.cached.device)
            self._generator.manual_seed(seed)

    # the contract --------------------------------------------------------------
    def render_prompt(self, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
                      reply_prefix: str = "") -> list[int]:
        return render_prompt(self.tokenizer, prompt, tools, self.name, self.context_length, reply_prefix)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def start(self, seq: int, prompt_ids: list[int]) -> None:
        self.cached.new(seq, prompt_ids)

    def extend(self, seqs: list[int], token_ids: list[list[int]]) -> None:
        for s, ids in zip(seqs, token_ids):
            self.cached.append(s, ids)

    def generate_step(self, seqs: list[int], budgets: list[int],
                      constraints: list[Cursor | None] | None = None) -> list[Step]:
        if not seqs:
            return []
        budgets = [max(1, min(b, self.context_length - len(self.cached.states[s].ids))) for s, b in zip(seqs, budgets)]
        rows = {i: c for i, c in enumerate(constraints or []) if c is not None}
        _, gens, eos = self.cached.run(
            seqs, budgets=budgets, sampling=self.sampling, generator=self._generator,
            boundary=self.boundary, sync_every=self.sync_every, vocab_limit=len(self.tokenizer),
            constrained=ConstrainedRows(rows, self.tokenizer, self.eos_ids, len(self.tokenizer)) if rows else None,
        )
        texts = self.tokenizer.batch_decode(gens, skip_special_tokens=True)
        delims = self._delimiters
        return [
            Step(g, t, e, (not e) and any(t.endswith(d) or d in t for d in delims))
            for g, t, e in zip(gens, texts, eos)
        ]

    def rollback(self, seqs: list[int], n_tokens: list[int]) -> None:
        for s, n in zip(seqs, n_tokens):
            self.cached.truncate(s, n)

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    def num_tokens(self, seq: int) -> int:
        return len(self.cached.states[seq].ids)
