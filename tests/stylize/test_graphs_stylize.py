"""CUDA-graph replay (``--speed graphs``, the CLI default on CUDA) in the stylize modes, on the CPU
with ``TracedCapture`` (graph semantics: Python frozen at capture, tensors re-read at replay).

ControlNet residuals, img2img's partial schedule and Plus's inversion all reach the UNet as new
tensors every step; a graph must take them as data."""

from __future__ import annotations

import contextlib

import numpy as np

from instantstyle import fast as fast_path
from instantstyle.fast import graphs, unet_graphs

TOL = 2 / 255


def as_array(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


@contextlib.contextmanager
def speed(model, options, capture=False):
    saved = model.speed
    model.speed = options
    cache = unet_graphs.graph_cache(model.pipe.unet, graphs.TracedCapture()) if capture else None
    try:
        yield cache
    finally:
        model.speed = saved
        unet_graphs.release_graphs(model.pipe.unet)


def run(model, style, **kw):
    params = dict(prompt="a cat", steps=2, guidance=5.0, seed=0, style=[str(style)]) | kw
    return as_array(model.generate(**params))


def test_controlnet_img2img_and_plus_replay_as_graphs(tiny_model, tiny_paths, style_images, content_images):
    content = str(content_images["content"])
    control = [f"canny={tiny_paths['controlnet_canny']}"]
    cases = {
        "controlnet": dict(content=content, control=control),
        "controlnet-weak": dict(content=content, control=control, control_scale=[0.1]),
        "img2img": dict(content=content, strength=0.7),
        "plus": dict(
            task="plus", content=content, control=[f"tile={tiny_paths['controlnet_canny']}"], inversion="ddim"
        ),  # graph replay is the subject; ReNoise doubles the UNet calls
    }
    with speed(tiny_model, fast_path.PLAIN):
        refs = {name: run(tiny_model, style_images["red"], **kw) for name, kw in cases.items()}
    assert np.abs(refs["controlnet-weak"] - refs["controlnet"]).max() > 10 * TOL  # residuals matter
    with speed(tiny_model, fast_path.GRAPHS, capture=True) as cache:
        for name, kw in cases.items():
            out = run(tiny_model, style_images["red"], **kw)
            assert np.abs(out - refs[name]).max() <= TOL, name
        assert cache.captures >= 1 and cache.replays > cache.captures
