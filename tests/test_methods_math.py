"""Exact maths of the baselines on hand-made tensors (no model)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instantstyle.processors.maths import (
    adain,
    adain_channels,
    reference_rows,
    shared_attention,
    swapped_attention,
)


def _stats(x):
    return x.mean(-2), x.var(-2).sqrt()


def test_adain_gives_the_reference_per_channel_mean_and_std():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 50, 4, generator=g) * 3 + 1  # [B, H, L, D]
    ref = torch.randn(1, 3, 40, 4, generator=g) * torch.tensor([0.5, 2.0, 1.0, 4.0]) - 2
    out = adain(x, ref, eps=0.0)
    mu, sd = _stats(out)
    mu_r, sd_r = _stats(ref)
    assert torch.allclose(mu, mu_r.expand_as(mu), atol=1e-5)
    assert torch.allclose(sd, sd_r.expand_as(sd), atol=1e-5)
    # per channel: the channels keep different statistics
    assert sd[0, 0, 3] > 3 * sd[0, 0, 0]


def test_adain_channels_matches_latent_statistics_per_channel():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ref = torch.randn(1, 4, 8, 8, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5
    out = adain_channels(x, ref, eps=0.0)
    assert torch.allclose(out.mean((2, 3)), ref.mean((2, 3)).expand(2, 4), atol=1e-5)
    assert torch.allclose(out.flatten(2).std(-1), ref.flatten(2).std(-1).expand(2, 4), atol=1e-4)


def test_reference_rows_takes_row_zero_of_each_cfg_half():
    x = torch.arange(6.0).view(6, 1)  # G=2 halves of B=3
    assert reference_rows(x, 3).flatten().tolist() == [0, 0, 0, 3, 3, 3]


def _qkv(batch=4, heads=2, length=6, dim=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=g) for _ in range(3)]


def test_shared_attention_equals_explicit_formula():
    q, k, v = _qkv()
    out = shared_attention(q, k, v, group=2, score_shift=math.log(2))
    for row in range(4):
        ref = row - row % 2  # reference of this CFG half
        qn = adain(q[row], q[ref])
        kn = adain(k[row], k[ref])
        keys = torch.cat([kn, k[ref]], dim=-2)  # [H, 2L, D]
        vals = torch.cat([v[row], v[ref]], dim=-2)
        logits = qn @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        logits[..., 6:] += math.log(2)
        expected = logits.softmax(-1) @ vals
        assert torch.allclose(out[row], expected, atol=1e-5), row


def test_shared_attention_leaves_the_reference_row_as_plain_attention():
    q, k, v = _qkv()
    out = shared_attention(q, k, v, group=2)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out[0], plain[0], atol=1e-5) and torch.allclose(out[2], plain[2], atol=1e-5)
    assert (out[1] - plain[1]).abs().max() > 1e-2  # targets do change


def test_swapped_attention_uses_the_reference_keys_and_values():
    q, k, v = _qkv()
    out = swapped_attention(q, k, v, group=2)
    expected = F.scaled_dot_product_attention(q[1], k[0], v[0])
    assert torch.allclose(out[1], expected, atol=1e-6)
    # reference equal to target: swapping is a no-op
    same = [torch.cat([t[:1], t[:1]]) for t in (q, k, v)]
    assert torch.allclose(swapped_attention(*same, group=2), F.scaled_dot_product_attention(*same), atol=1e-6)


def test_colour_calibration_matches_the_targets_to_the_reference_rows_predicted_x0():
    from diffusers import DDIMScheduler

    from instantstyle.methods.visual_style_prompting import calibrate

    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sched.set_timesteps(50)
    t = next(int(t) for t in sched.timesteps if 100 < t < 150)
    g = torch.Generator().manual_seed(3)
    sample, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    cond_ref = torch.randn(1, 4, 8, 8, generator=g) * 0.5 + 0.3  # the reference's conditional prediction
    plain = DDIMScheduler.from_config(sched.config)
    plain.set_timesteps(50)
    base = plain.step(eps, t, sample)
    calibrate(sched, reference_prediction=lambda: cond_ref)
    out = sched.step(eps, t, sample, eta=0.0)
    a_t, a_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1000 // 50]
    ref_x0 = (sample[:1] - (1 - a_t).sqrt() * cond_ref) / a_t.sqrt()  # row 0 from its conditional prediction
    assert torch.allclose(out.pred_original_sample[:1], ref_x0, atol=1e-5)
    x0_implied = (out.prev_sample - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
    assert torch.allclose(x0_implied[1:].mean((2, 3)), ref_x0.mean((2, 3)).expand(2, 4), atol=1e-3)
    assert torch.allclose(x0_implied[1:].std((2, 3)), ref_x0.std((2, 3)).expand(2, 4), atol=1e-3)
    assert not torch.allclose(out.prev_sample[1:], base.prev_sample[1:], atol=1e-2)  # calibration moved them
    # outside the window the targets' step is DDIM's own
    t_out = int(sched.timesteps[0])
    assert torch.equal(
        sched.step(eps, t_out, sample).prev_sample[1:], plain.step(eps, t_out, sample).prev_sample[1:]
    )


def test_swap_range_covers_the_requested_fraction_of_steps():
    from instantstyle.methods.visual_style_prompting import swap_active

    assert [swap_active(i, 10, 0.0, 1.0) for i in range(10)] == [True] * 10
    assert [i for i in range(10) if swap_active(i, 10, 0.2, 0.5)] == [2, 3, 4]


def test_importing_methods_and_config_does_not_import_torch():
    code = "import sys, instantstyle.methods, instantstyle.config; assert 'torch' not in sys.modules, 'torch'"
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"method": "styl-aligned"}, "valid methods: instantstyle, ip-adapter, style-aligned"),
        ({"method": "b-lora"}, "--method b-lora needs --b-lora DIR"),
        ({"method": "style-aligned"}, "needs --reference-prompt"),
        ({"b_lora": "x"}, "--b-lora 'x' is read only by --method b-lora"),
        ({"method": "style-aligned", "reference_prompt": "r", "scale": 0.5}, "--scale 0.5 is read only by"),
        (
            {"method": "visual-style-prompting", "reference_prompt": "r", "scheduler": "unipc"},
            "sample with DDIM",
        ),
        (
            {"method": "visual-style-prompting", "reference_prompt": "r", "swap_start": 0.6, "swap_end": 0.5},
            "swap_start",
        ),
        ({"method": "b-lora", "b_lora": "d", "task": "img2img", "content": "c.png"}, "text-to-image only"),
    ],
)
def test_bad_method_requests_fail_with_one_line(params, message):
    from instantstyle.config import make_request
    from instantstyle.errors import InstantStyleError

    with pytest.raises(InstantStyleError) as err:
        make_request(prompt="a cat", **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ip_adapter_accepts_mode_full_only():
    from instantstyle.config import make_request
    from instantstyle.errors import InstantStyleError

    make_request(prompt="a", method="ip-adapter", mode="full")
    with pytest.raises(InstantStyleError, match="--mode 'layout'"):
        make_request(prompt="a", method="ip-adapter", mode="layout")


def test_style_aligned_appends_the_style_words_as_the_authors_notebook():
    from instantstyle.config import make_request
    from instantstyle.methods.style_aligned import target_prompt

    def req(**kw):
        return make_request(prompt="A man eats pizza", method="style-aligned", **kw)

    assert (
        target_prompt(req(reference_prompt="Man laying in a bed, medieval painting."))
        == "A man eats pizza, medieval painting."
    )
    assert (
        target_prompt(req(reference_prompt="a watercolour harbour")) == "A man eats pizza"
    )  # no style clause
    assert (
        target_prompt(req(reference_prompt="x", style_description="ink wash"))
        == "A man eats pizza, ink wash."
    )
    assert target_prompt(req(reference_prompt="a, b", style_description="")) == "A man eats pizza"
