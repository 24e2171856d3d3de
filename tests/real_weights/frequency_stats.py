"""Is a picture a picture or noise? The share of its spectral power in the highest spatial
frequencies: about 0.8 for white noise (power spread evenly over all frequencies), a few per cent
for a photograph or a painting (power falls off roughly as 1/f^2)."""

from __future__ import annotations

import numpy as np
from PIL import Image

HIGH = 0.25  # radial frequency, in cycles per pixel (Nyquist is 0.5), above which power counts as high
WHITE_NOISE_SHARE = 1 - np.pi * HIGH**2  # the square [-0.5, 0.5]^2 minus the disc of radius HIGH: ~0.80
MAX_PICTURE_SHARE = 0.2  # a quarter of white noise's share


def high_frequency_share(image: Image.Image | np.ndarray) -> float:
    """Share of the (mean-removed) luminance's power at radial frequencies above ``HIGH``."""
    grey = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.float64)
    assert grey.ndim == 2, f"expected a 2-D luminance array, got shape {grey.shape}"
    h, w = grey.shape
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2  # [H, W]
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]  # cycles per pixel
    radius = np.sqrt(fx**2 + fy**2)  # [H, W]
    total = power.sum()
    return float(power[radius > HIGH].sum() / total) if total > 0 else 0.0
