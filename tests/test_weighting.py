"""ω: each weighting function from the paper, and the accept decision."""

from __future__ import annotations

import math
import random

import pytest

from rsd_core import RSDConfig
from rsd_core.weighting import Weighting


def w(**kw) -> Weighting:
    return Weighting.from_config(RSDConfig(**kw))


def test_binary_is_a_threshold_at_delta():
    b = w(threshold=0.7)
    assert [b.weight(r) for r in (0.0, 0.69, 0.7, 0.71, 1.0)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert b.decide([0.69, 0.7], random.Random(0)) == ([0.0, 1.0], [False, True])


def test_binary_extremes_are_draft_only_and_target_only():
    assert w(threshold=0.0).always_accepts and not w(threshold=0.0).always_rejects
    assert w(threshold=1.0).always_rejects and w(threshold=1.0).weight(1.0) == 0.0
    assert not w(threshold=0.5).always_accepts and not w(threshold=0.5).always_rejects


@pytest.mark.parametrize("kind, r, expected", [
    ("constant", 0.1, 0.3), ("constant", 0.9, 0.3),
    ("clip", 0.4, 0.4), ("clip", 1.0, 1.0), ("clip", 0.0, 0.0),
    ("sigmoid", 1.0, 0.5), ("sigmoid", 0.5, 0.5 / 1.5),
    ("logistic", 0.7, 0.5), ("logistic", 0.9, 1 / (1 + math.exp(-10 * 0.2))),
])
def test_soft_weightings_follow_the_paper(kind, r, expected):
    assert w(weighting=kind, constant_p=0.3, threshold=0.7, alpha=10).weight(r) == pytest.approx(expected)


def test_soft_acceptance_rate_matches_omega():
    clip = w(weighting="clip")
    _, keep = clip.decide([0.3] * 20000, random.Random(1))
    assert sum(keep) / len(keep) == pytest.approx(0.3, abs=0.02)
    _, again = clip.decide([0.3] * 20000, random.Random(1))
    assert keep == again  # the same seed gives the same decisions


def test_constant_extremes():
    assert w(weighting="constant", constant_p=1.0).always_accepts
    assert w(weighting="constant", constant_p=0.0).always_rejects
