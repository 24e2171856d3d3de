"""The controls on the fast path: ``--speed graphs`` replayed by the CPU stand-in (TracedCapture).

Scales are tensors there, so the window (scales switched off mid-call) replays the graph it
captured, and a request structure (the number of token sets, "slots") is captured once: repeating
it with another window, style image or boost replays; every single-slot preset shares the style
preset's graph, and precise and a composition image (two slots) share one.
"""

from __future__ import annotations

import contextlib

import numpy as np

from instantstyle import fastpath, graphs

TOL = 2
BASE = dict(prompt="a cat", seed=3, steps=4, width=64, height=64)
GRAPHED = fastpath.FastOptions(cuda_graphs=True, fuse_qkv=True)


@contextlib.contextmanager
def speed(model, options, traced=False):
    saved = model.speed
    model.speed = options
    cache = fastpath.graph_cache(model.pipe.unet, graphs.TracedCapture()) if traced else None
    try:
        yield cache
    finally:
        model.speed = saved
        if traced:
            fastpath.release_graphs(model.pipe.unet)


def generate(model, style, **params):
    return np.asarray(model.generate(style=[str(style)], **{**BASE, **params})[0]).astype(np.int16)


def test_window_and_presets_replay_their_graph(tiny_model, style_images):
    red, blue = style_images["red"], style_images["blue"]
    cases = [dict(), dict(style_window="0.25:1"), dict(mode="strong", style_window="0:0.5"),
             dict(mode="composition", style_window="0:0.75"),
             dict(mode="precise"), dict(mode="precise", layout_boost=2.0, style_window="0:0.5"),
             dict(composition=str(blue), style_window="0.5:1")]
    with speed(tiny_model, fastpath.PLAIN):
        refs = [generate(tiny_model, red, **c) for c in cases]
    assert np.abs(refs[1] - refs[0]).max() > 10 * TOL  # the window is visible
    assert np.abs(refs[5] - refs[4]).max() > 10 * TOL  # and so is the boost
    with speed(tiny_model, GRAPHED, traced=True) as cache:
        out = [generate(tiny_model, red, **cases[0])]
        assert cache.captures == 1
        for c in cases[1:4]:  # single-slot presets under windows: the same graph
            out.append(generate(tiny_model, red, **c))
        assert cache.captures == 1
        out.append(generate(tiny_model, red, **cases[4]))  # precise: a second token set (slot), captured once
        assert cache.captures == 2
        out.append(generate(tiny_model, red, **cases[5]))
        generate(tiny_model, blue, mode="precise", style_window="0.25:0.75")
        assert cache.captures == 2  # new window, boost and image: replayed
        out.append(generate(tiny_model, red, **cases[6]))
        generate(tiny_model, blue, composition=str(red), style_window="0:1")
        assert cache.captures == 2  # a composition image is a second token set too: the same graph
        assert cache.replays == 4 * (len(cases) + 2)  # every step replayed, none run eagerly
    for case, ref, got in zip(cases, refs, out, strict=True):
        assert np.abs(got - ref).max() <= TOL, case
