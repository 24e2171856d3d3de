"""The small leaves every generator shares: seeds, sizes, step callbacks, samplers."""

from __future__ import annotations

import pytest
import torch

from instantstyle import config, schedulers, seeds, sizes, steps
from instantstyle.errors import InstantStyleError


def test_a_seed_means_one_cpu_generator_per_image():
    one = seeds.generators(7, 1)
    batch = seeds.generators(7, 3)
    assert isinstance(one, torch.Generator) and len(batch) == 3
    assert [g.initial_seed() for g in batch] == [7, 8, 9]
    assert seeds.pick_seed(5) == 5 and 0 <= seeds.pick_seed(None) < seeds.SEED_RANGE


def test_sizes_must_be_multiples_of_the_unit():
    sizes.check_size(1024, 768, 32)
    with pytest.raises(InstantStyleError, match="multiples of 32"):
        sizes.check_size(1000, 768, 32)
    assert sizes.fit_size(1600, 900, 1024, 32) == (1824, 1024, (1820, 1024))


def test_progress_and_chain_run_in_order():
    seen = []
    first = steps.progress(4, lambda done, total: seen.append(("step", done, total)))
    second = steps.progress(4, None, update=lambda i, latents: latents + 1)
    assert steps.progress(4, None) is None and steps.chain(None, first) is first
    out = steps.chain(first, None, second)(None, 1, 0, {"latents": 1})
    assert out == {"latents": 2} and seen == [("step", 2, 4)]


def test_every_request_sampler_has_a_diffusers_class():
    assert set(schedulers.SAMPLERS) == set(config.SCHEDULERS)
