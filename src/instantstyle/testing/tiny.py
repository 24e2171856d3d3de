"""Test support around the tiny model: the model itself is a model source (``instantstyle.sources.tiny``).

Re-exports that module's names for tests, plus helpers only tests use.
"""

from __future__ import annotations

import torch

from ..sources.tiny import *  # noqa: F403


def damp_unet_output(unet, factor: float = 1e-3) -> None:
    """Scale the UNet's last convolution in place, so its prediction barely depends on the latent.

    Used by the DDIM inversion test: a random UNet's prediction is far from smooth in its input, so
    invert-then-regenerate diverges on it; a damped one behaves like a well-trained model there.
    Only ever applied to a model built for that test, never to the shared tiny model.
    """
    with torch.no_grad():
        unet.conv_out.weight.mul_(factor)
        unet.conv_out.bias.mul_(factor)
