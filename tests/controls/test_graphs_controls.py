"""The controls on the fast path: ``--speed graphs`` replayed by the CPU stand-in (TracedCapture).

Scales are tensors there, so the window (scales switched off mid-call) replays the graph it
captured, and every call carries one fixed slot structure (``injection.fixed_slots``: the style
and one more token set, unused at scale 0), so every preset, a composition image and a negative
image replay the style preset's graph.
"""

from __future__ import annotations

import contextlib

import numpy as np

from instantstyle import fast as fast_path
from instantstyle.fast import graphs, unet_graphs

TOL = 2
BASE = dict(prompt="a cat", seed=3, steps=2, width=64, height=64)
GRAPHED = fast_path.FastOptions(cuda_graphs=True, fuse_qkv=True)


@contextlib.contextmanager
def speed(model, options, traced=False):
    saved = model.speed
    model.speed = options
    cache = unet_graphs.graph_cache(model.pipe.unet, graphs.TracedCapture()) if traced else None
    try:
        yield cache
    finally:
        model.speed = saved
        if traced:
            unet_graphs.release_graphs(model.pipe.unet)


def generate(model, style, **params):
    return np.asarray(model.generate(style=[str(style)], **{**BASE, **params})[0]).astype(np.int16)


def test_window_and_presets_replay_their_graph(tiny_model, style_images):
    red, blue, green = style_images["red"], style_images["blue"], style_images["green"]
    cases = [
        dict(),
        dict(style_window="0.5:1"),
        dict(mode="strong", style_window="0:0.5"),
        dict(mode="precise"),
        dict(mode="precise", layout_boost=3.0, style_window="0:0.5"),
        dict(composition=str(blue), style_window="0.5:1"),
        dict(mode="style+layout", negative_style=str(green)),
        dict(mode="composition"),
    ]
    with speed(tiny_model, fast_path.PLAIN):
        refs = [generate(tiny_model, red, **c) for c in cases]
    assert np.abs(refs[1] - refs[0]).max() > 10 * TOL  # the window is visible
    assert np.abs(refs[4] - refs[3]).max() > 10 * TOL  # and so are boost + window
    with speed(tiny_model, GRAPHED, traced=True) as cache:
        out = [generate(tiny_model, red, **c) for c in cases]
        generate(tiny_model, blue, mode="precise", style_window="0.5:1", negative_style=str(green))
        # One graph: single-slot presets, precise (a second token set), a composition image, a
        # negative image, windows and boosts are all data on the one fixed slot structure.
        assert cache.captures == 1
        assert cache.replays == 2 * (len(cases) + 1)  # every step replayed, none run eagerly
    for case, ref, got in zip(cases, refs, out, strict=True):
        assert np.abs(got - ref).max() <= TOL, case


def test_fixed_slots_pad_only_short_single_adapter_calls():
    import torch

    from instantstyle import injection

    e = torch.randn(2, 1, 8)
    kinds, embeds, scales = injection.fixed_slots(["style"], [e], [{"a": 1.0}], n_loaded=1)
    assert kinds == ["style", "unused"] and embeds[1] is e and scales == [{"a": 1.0}, {}]  # {}: 0 everywhere
    two = (["style", "uncond"], [e, e], [{"a": 1.0}, {"b": 2.0}])
    assert injection.fixed_slots(*two, n_loaded=1) == tuple(map(list, two))
    assert injection.fixed_slots(["style"], [e], [{}], n_loaded=2)[0] == [
        "style"
    ]  # Plus: two adapters loaded


def test_window_and_precise_on_the_pruned_graph_path(tiny_model, style_images):
    """``max-tuned``'s pieces (image K/V once per call, no branch in inactive IP layers: a graph per
    preset) with graphs: the window still switches the style off, and replays."""
    from dataclasses import replace

    red, blue = style_images["red"], style_images["blue"]
    tuned = replace(GRAPHED, context_kv=True, prune_ip=True)
    case = dict(mode="precise", composition=str(blue), style_window="0.5:1")
    with speed(tiny_model, fast_path.PLAIN):
        ref = generate(tiny_model, red, **case)
        full = generate(tiny_model, red, **{**case, "style_window": "0:1"})
    assert np.abs(full - ref).max() > 10 * TOL
    with speed(tiny_model, tuned, traced=True) as cache:
        got = generate(tiny_model, red, **case)
        captures = cache.captures
        again = generate(tiny_model, red, **{**case, "style_window": "0:1"})
        assert cache.captures == captures  # another window: the same graph
    assert np.abs(got - ref).max() <= TOL and np.abs(again - full).max() <= TOL
