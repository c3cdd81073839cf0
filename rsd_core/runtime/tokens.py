"""Facts about a tokenizer that backends and rewards both need."""

from __future__ import annotations

from typing import Any


def control_strings(tokenizer: Any) -> list[str]:
    """The tokenizer's special (control) tokens as text, longest first: text never merges across them, and
    text a user writes must not become them."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in added.values() if getattr(t, "special", False)}
    found |= set(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted((c for c in found if c), key=len, reverse=True)
