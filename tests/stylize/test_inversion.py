"""DDIM inversion then regeneration (same prompt, guidance 1) reconstructs the content latent.

Two tests, because a random UNet is not a fair subject: its prediction is far from smooth in its
input, so invert -> regenerate diverges on the default tiny model (measured relative error
||x0' - x0|| / ||x0||: 19 at 4 steps, 27 at 10 steps). The mechanism (schedules, timestep
alignment, the pipeline starting from the inverted latent) is checked exactly with a UNet whose
prediction does not depend on the latent, and end to end on a tiny model whose UNet output is
damped by 1e-3 (``damp_unet_output``), where the measured relative error is 0.0039 at 4 steps
(0.0061 at 10); the test allows 0.01.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

STEPS = 4


@pytest.fixture
def fresh_pipe():
    """A tiny SDXL built for this test only (never the shared ``tiny_model``)."""
    from instantstyle.testing.tiny import build_tiny

    pipe = build_tiny().pipe
    pipe.set_progress_bar_config(disable=True)
    return pipe


def regenerate(pipe, inversion, prompt):
    from instantstyle.inversion import ddim_scheduler

    original, pipe.scheduler = pipe.scheduler, ddim_scheduler(pipe)
    try:
        return pipe(
            prompt=prompt,
            latents=inversion.noisy,
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            output_type="latent",
        ).images
    finally:
        pipe.scheduler = original


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_inversion_mechanism_is_exact_when_the_prediction_ignores_the_latent(fresh_pipe):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    from instantstyle.inversion import ddim_invert

    gen = torch.Generator().manual_seed(0)
    bias = torch.randn(1, 4, 32, 32, generator=gen)

    def fake_forward(sample, timestep, *args, return_dict=True, **kwargs):
        eps = bias.expand_as(sample) * (0.2 + float(timestep) / 1000)  # depends on t, never on the latent
        return UNet2DConditionOutput(sample=eps) if return_dict else (eps,)

    fresh_pipe.unet.forward = fake_forward
    x0 = torch.randn(1, 4, 32, 32, generator=gen)
    inversion = ddim_invert(fresh_pipe, x0, "a house", steps=STEPS, progress=False)
    assert relative_error(inversion.noisy, x0) > 0.5  # it did move far from x0
    assert relative_error(regenerate(fresh_pipe, inversion, "a house"), x0) < 1e-4  # measured ~3e-7


def test_invert_then_regenerate_reconstructs_on_a_smooth_tiny_model(fresh_pipe, content_images):
    from instantstyle.inversion import ddim_invert
    from instantstyle.testing.tiny import damp_unet_output

    damp_unet_output(fresh_pipe.unet, 1e-3)
    image = Image.open(content_images["content"]).convert("RGB")
    inversion = ddim_invert(fresh_pipe, image, "a house", steps=STEPS, progress=False)
    out = regenerate(fresh_pipe, inversion, "a house")
    assert relative_error(out, inversion.clean) < 0.01  # measured 0.0039
    # The check can fail: regenerating from another starting latent lands elsewhere.
    other = inversion.noisy + 0.5 * torch.randn_like(inversion.noisy)
    inversion.latents[-1] = other
    assert relative_error(regenerate(fresh_pipe, inversion, "a house"), inversion.clean) > 0.1


def test_renoise_reconstructs_at_least_as_well_as_ddim(fresh_pipe, content_images):
    """ReNoise's fixed-point refinement (one renoise step, the InstantStyle-Plus setting) on the damped
    tiny model, 4 steps: relative error 0.0002 vs plain DDIM's 0.0036 (10 steps: 0.0004 vs 0.0056).

    Its noise regularisation is left off here: its constants assume unit-variance noise estimates,
    and the damped model's are 1e3 times smaller, so regularising them wrecks the latent (error 2.2);
    it is checked on Gaussian noise below.
    """
    from instantstyle.inversion import invert
    from instantstyle.testing.tiny import damp_unet_output

    damp_unet_output(fresh_pipe.unet, 1e-3)
    image = Image.open(content_images["content"]).convert("RGB")
    errors = {}
    for method in ("ddim", "renoise"):
        inv = invert(
            fresh_pipe,
            image,
            "a house",
            method=method,
            steps=STEPS,
            renoise_steps=1,
            noise_regularization=False,
            progress=False,
        )
        assert inv.timesteps == sorted(inv.timesteps) and len(inv.latents) == STEPS + 1
        errors[method] = relative_error(regenerate(fresh_pipe, inv, "a house"), inv.clean)
    assert errors["renoise"] <= errors["ddim"], errors  # measured 0.0002 vs 0.0036
    assert errors["ddim"] < 0.01


def test_noise_regularization_pulls_a_noise_estimate_toward_the_forward_noise_statistics():
    from instantstyle.inversion import patch_kl, regularize_noise

    g = torch.Generator().manual_seed(0)
    eps = torch.randn(1, 4, 32, 32, generator=g) * 1.5 + 0.3  # off in mean and variance
    forward = torch.randn(1, 4, 32, 32, generator=g)
    out = regularize_noise(eps, forward, torch.Generator().manual_seed(1))
    assert patch_kl(out, forward) < 0.8 * patch_kl(eps, forward)
    assert 0.01 < float((out - eps).norm() / eps.norm()) < 0.5  # a correction, not a replacement
