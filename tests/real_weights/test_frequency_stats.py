"""The not-noise statistic of the real-weights check, on pictures whose answer is known (CPU, runs
by default): white noise scores near its theoretical share, smooth and drawn pictures far below the
threshold, so the check on a real SDXL image can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from frequency_stats import MAX_PICTURE_SHARE, WHITE_NOISE_SHARE, high_frequency_share
from PIL import Image, ImageFilter

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ref.png"


def test_white_noise_scores_its_theoretical_share():
    noise = np.random.default_rng(0).normal(size=(256, 256))
    share = high_frequency_share(noise)
    assert share == pytest.approx(WHITE_NOISE_SHARE, abs=0.02)
    assert share > 3 * MAX_PICTURE_SHARE
    # random RGB pixels, as an image, too
    rgb = np.random.default_rng(1).integers(0, 256, size=(128, 192, 3), dtype=np.uint8)
    assert high_frequency_share(Image.fromarray(rgb)) > 3 * MAX_PICTURE_SHARE


def test_smooth_and_drawn_pictures_score_far_below_the_threshold():
    y, x = np.mgrid[0:256, 0:256] / 256
    smooth = np.sin(2 * np.pi * 3 * x) + np.cos(2 * np.pi * 2 * y) + x * y  # [256, 256], a few cycles
    assert high_frequency_share(smooth) < 0.01
    blurred = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256), dtype=np.uint8))
    blurred = blurred.filter(ImageFilter.GaussianBlur(4))  # noise with its high frequencies removed
    assert high_frequency_share(blurred) < 0.01
    assert high_frequency_share(Image.open(EXAMPLE)) < MAX_PICTURE_SHARE / 4  # the example seascape


def test_flat_image_has_no_power():
    assert high_frequency_share(np.full((32, 32), 7.0)) == 0.0
