"""The target's rewrite of a rejected step, speculated from that step (lossless).

When the PRM rejects a draft step, the target must write the step itself. The rejected step is still a
good guess at the target's own tokens, so the target first reads it in one forward and keeps the
longest prefix its own decoding would have produced, then writes on from there:

- greedy: the proposal's tokens while they equal the target's argmax; the first one that differs is
  replaced by the target's argmax (the correction token);
- sampling: the standard speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023): token x
  is kept with probability min(1, p(x) / q(x)), where p is the target's distribution and q the one the
  draft drew x from; the first refused token is redrawn from max(0, p - q), normalized.

Either way the target's text has exactly the distribution it would have without the proposal; only
the number of target forwards changes.

Example:
    >>> import torch
    >>> logits = torch.tensor([[0., 5., 0.], [5., 0., 0.], [0., 0., 5.]])  # the target's argmax: 1, 0, 2
    >>> verify(logits, [1, 0, 1], None, SamplingConfig(), None)  # keeps 1, 0; corrects the third to 2
    (2, 2)
"""

from __future__ import annotations

import torch

from rsd_core.config import SamplingConfig
from rsd_core.sampling import filtered_probs


def verify(logits: torch.Tensor, proposal: list[int], draft_probs: torch.Tensor | None, sampling: SamplingConfig,
           generator: torch.Generator | None) -> tuple[int, int]:
    """How many leading proposal tokens the target keeps, and the token it writes after them.

    ``logits``: the target's logits before each proposal token, and after the last one ([m + 1, V]; the
    last row gives the token after a fully kept proposal). ``draft_probs``: the distributions the draft
    drew each token from ([m, V]); None means the draft picked greedily (each q is one-hot at its token).
    """
    m = len(proposal)
    if m == 0:
        return 0, int(_draw(logits[0], sampling, generator))
    if sampling.greedy:
        picks = logits.argmax(-1).tolist()
        k = next((j for j in range(m) if picks[j] != proposal[j]), m)
        return k, picks[k]
    p = filtered_probs(logits, sampling)  # [m + 1, V]
    if draft_probs is None:
        q = torch.zeros_like(p[:m]).scatter_(1, torch.tensor(proposal, device=p.device)[:, None], 1.0)
    elif draft_probs.shape[0] < m:
        raise ValueError(f"the draft's distributions cover {draft_probs.shape[0]} of the step's {m} tokens")
    else:
        q = draft_probs[:m].to(p.device, p.dtype)
    V = min(p.shape[-1], q.shape[-1])
    idx = torch.tensor(proposal, device=p.device)
    rows = torch.arange(m, device=p.device)
    ratio = (p[rows, idx] / q[rows, idx].clamp_min(1e-30)).clamp(max=1.0)
    u = torch.rand(m, generator=generator, device=p.device) if generator is not None else torch.rand(m, device=p.device)
    refused = (u >= ratio).tolist()
    k = next((j for j in range(m) if refused[j]), m)
    if k == m:
        return m, int(_draw(logits[m], sampling, generator, probs=p[m]))
    residual = (p[k, :V] - q[k, :V]).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p == q at this position (the refusal was a rounding case)
        residual = p[k, :V]
    return k, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def _draw(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None,
          probs: torch.Tensor | None = None) -> torch.Tensor:
    if sampling.greedy:
        return logits.argmax(-1)
    probs = filtered_probs(logits[None], sampling)[0] if probs is None else probs
    return torch.multinomial(probs, 1, generator=generator)[0]
