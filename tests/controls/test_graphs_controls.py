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
BASE = dict(prompt="a cat", seed=3, steps=2, width=64, height=64)
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
    cases = [dict(), dict(style_window="0.5:1"), dict(mode="strong", style_window="0:0.5"),
             dict(mode="precise"), dict(mode="precise", layout_boost=3.0, style_window="0:0.5"),
             dict(composition=str(blue), style_window="0.5:1")]
    with speed(tiny_model, fastpath.PLAIN):
        refs = [generate(tiny_model, red, **c) for c in cases]
    assert np.abs(refs[1] - refs[0]).max() > 10 * TOL  # the window is visible
    assert np.abs(refs[4] - refs[3]).max() > 10 * TOL  # and so are boost + window
    with speed(tiny_model, GRAPHED, traced=True) as cache:
        out = [generate(tiny_model, red, **c) for c in cases[:3]]
        assert cache.captures == 1  # single-slot presets under windows: the style preset's graph
        out.append(generate(tiny_model, red, **cases[3]))  # precise: a second token set (slot), captured once
        assert cache.captures == 2
        out += [generate(tiny_model, red, **c) for c in cases[4:]]
        generate(tiny_model, blue, mode="precise", style_window="0.5:1")
        assert cache.captures == 2  # new window, boost, image, and a composition image: replayed
        assert cache.replays == 2 * (len(cases) + 1)  # every step replayed, none run eagerly
    for case, ref, got in zip(cases, refs, out, strict=True):
        assert np.abs(got - ref).max() <= TOL, case


def test_window_and_precise_on_the_pruned_graph_path(tiny_model, style_images):
    """``max-tuned``'s pieces (image K/V once per call, no branch in inactive IP layers: a graph per
    preset) with graphs: the window still switches the style off, and replays."""
    from dataclasses import replace

    red, blue = style_images["red"], style_images["blue"]
    tuned = replace(GRAPHED, context_kv=True, prune_ip=True)
    case = dict(mode="precise", composition=str(blue), style_window="0.5:1")
    with speed(tiny_model, fastpath.PLAIN):
        ref = generate(tiny_model, red, **case)
        full = generate(tiny_model, red, **{**case, "style_window": "0:1"})
    assert np.abs(full - ref).max() > 10 * TOL
    with speed(tiny_model, tuned, traced=True) as cache:
        got = generate(tiny_model, red, **case)
        captures = cache.captures
        again = generate(tiny_model, red, **{**case, "style_window": "0:1"})
        assert cache.captures == captures  # another window: the same graph
    assert np.abs(got - ref).max() <= TOL and np.abs(again - full).max() <= TOL
