"""Fixtures of the metric tests: the tiny metric models on disk and one scorer over them (session-wide)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_metric_paths():
    from instantstyle.testing.tiny_metrics import tiny_metric_paths

    return tiny_metric_paths()


@pytest.fixture(scope="session")
def tiny_scorer(tiny_metric_paths):
    from instantstyle.metrics.scorer import Scorer

    return Scorer(
        csd=str(tiny_metric_paths["csd"]),
        clip=str(tiny_metric_paths["clip"]),
        dino=str(tiny_metric_paths["dino"]),
        device="cpu",
        dtype="fp32",
    ).load()
