"""The maths of the metrics on hand-made numbers: cosine, CLIPScore scaling, bootstrap coverage, Pareto."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instantstyle.metrics.maths import bootstrap_ci, clip_score, cosine, pareto_front
from instantstyle.metrics.scorer import weighted_reference_score


def test_cosine_on_hand_made_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [4.0, 3.0]])
    assert torch.allclose(cosine(a, b), torch.tensor([1.0, -1.0, 24 / 25]))
    # one row against many; scale never matters
    assert torch.allclose(cosine(a, torch.tensor([[0.0, 5.0]])), torch.tensor([0.0, 2**-0.5, 0.8]))
    assert float(cosine(torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0]))) == pytest.approx(1.0)


def test_clip_score_is_100_times_the_clamped_cosine():
    assert clip_score(0.2763) == pytest.approx(27.63)
    assert clip_score(-0.3) == 0.0
    assert torch.allclose(clip_score(torch.tensor([0.25, -0.1, 1.0])), torch.tensor([25.0, 0.0, 100.0]))
    assert clip_score(0.3, weight=2.5) == pytest.approx(0.75)  # Hessel et al.'s own weight


def test_weighted_reference_score():
    out = torch.tensor([1.0, 0.0])
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    assert weighted_reference_score(out, refs) == pytest.approx(0.5)
    assert weighted_reference_score(out, refs, [3, 1]) == pytest.approx(0.75)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, hits, widths = 200, 0, []
    for t in range(trials):
        x = rng.normal(0.3, 0.1, size=40)  # known distribution: mean 0.3
        mean, low, high = bootstrap_ci(x, resamples=1000, seed=t)
        assert low <= mean <= high and mean == pytest.approx(x.mean())
        hits += low <= 0.3 <= high
        widths.append(high - low)
    assert 0.89 <= hits / trials <= 0.99  # nominal 0.95 (percentile bootstrap runs a bit narrow at n=40)
    # and the width is what theory says: 2 * 1.96 * sigma / sqrt(n) = 0.062
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 0.1 / 40**0.5, rel=0.1)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([1, 2, 3], seed=0) == bootstrap_ci([1, 2, 3], seed=0)  # reproducible
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], level=1.5)


def test_pareto_front():
    # x = leakage (lower better), y = style (higher better)
    points = [(0.5, 0.6), (0.3, 0.6), (0.3, 0.4), (0.8, 0.9), (0.6, 0.7), (math.nan, 1.0)]
    assert pareto_front(points, (False, True)) == [1, 4, 3]
    assert pareto_front([(1, 1), (2, 2)], (True, True)) == [1]
    assert pareto_front([(1, 1), (1, 1)], (True, True)) == [0, 1]  # ties dominate nobody
