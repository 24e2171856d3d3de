"""CUDA-graph replay of the UNet (instantstyle.graphs, the fast path's ``cuda_graphs``), on the CPU.

``TracedCapture`` gives CUDA-graph semantics without a GPU: Python decisions are frozen at
capture and tensors are re-read at every replay. So these tests fail if anything a call changes
(style, prompt, scale, preset) lives in Python state that a real graph would have baked in.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from instantstyle import fast as fast_path
from instantstyle.fast import graphs, unet_graphs

TOL = 2  # 2/255 on uint8 images
BASE = dict(prompt="a cat", seed=3, steps=2, width=64, height=64)
GRAPHED = fast_path.FastOptions(cuda_graphs=True, fuse_qkv=True)
# What ``--speed max`` is on a GPU, with dynamo tracing but no code generation.
MAX_EAGER = replace(fast_path.MAX, compile_backend="eager")


@contextlib.contextmanager
def graphed(model, options):
    """Graphs on the CPU: a traced capturer on the UNet, the given speed; both undone after."""
    unet = model.pipe.unet
    cache = unet_graphs.graph_cache(unet, graphs.TracedCapture())
    saved = model.speed
    model.speed = options
    try:
        yield cache
    finally:
        model.speed = saved
        unet_graphs.release_graphs(unet)


def generate(model, style, **params):
    image = model.generate(style=[str(style)], **{**BASE, **params})[0]
    return np.asarray(image).astype(np.int16)


def plain(model, style, **params):
    saved = model.speed
    model.speed = fast_path.PLAIN
    try:
        return generate(model, style, **params)
    finally:
        model.speed = saved


def test_replayed_graph_matches_plain_and_follows_every_input(tiny_model, style_images):
    red_ref, blue_ref = plain(tiny_model, style_images["red"]), plain(tiny_model, style_images["blue"])
    half_ref = plain(tiny_model, style_images["red"], scale=0.2, prompt="a dog")
    assert np.abs(blue_ref - red_ref).max() > 20 * TOL  # the style drives the picture
    assert np.abs(half_ref - red_ref).max() > 20 * TOL  # so do scale and prompt
    with graphed(tiny_model, GRAPHED) as cache:
        red = generate(tiny_model, style_images["red"])
        assert (cache.captures, cache.replays) == (
            1,
            2,
        )  # one graph (CFG is one batched call), one replay per step
        blue = generate(tiny_model, style_images["blue"])
        half = generate(tiny_model, style_images["red"], scale=0.2, prompt="a dog")
        assert cache.captures == 1  # new style, prompt and scale: same graph, new data
        assert cache.replays == 6
    assert np.abs(red - red_ref).max() <= TOL
    assert np.abs(blue - blue_ref).max() <= TOL
    assert np.abs(half - half_ref).max() <= TOL


def test_new_size_gets_its_own_graph_new_preset_does_not(tiny_model, style_images):
    layout_ref = plain(tiny_model, style_images["green"], mode="style+layout", steps=1)
    with graphed(tiny_model, GRAPHED) as cache:
        generate(tiny_model, style_images["green"], steps=1)
        layout = generate(tiny_model, style_images["green"], mode="style+layout", steps=1)
        assert cache.captures == 1  # uniform IP layers: a preset is scale data
        generate(tiny_model, style_images["green"], steps=1, width=128)
        assert cache.captures == 2  # a new size is a new graph (any new shape, the batch too:
        # test_outputs_are_clones_and_keys_follow_shapes)
        generate(tiny_model, style_images["green"], steps=1)  # back to the first: kept
        assert cache.captures == 2
    assert np.abs(layout - layout_ref).max() <= TOL


def test_max_one_compiled_unet_one_graph_for_every_preset(tiny_model, style_images):
    """``max``: the whole UNet compiled and graphed; every IP layer keeps its branch with a scale
    tensor (0 when inactive), so style -> style+layout -> full changes data, not the graph and
    not the compiled code. (make_fx cannot trace through dynamo, so the two are checked apart.)"""
    from torch._dynamo.utils import counters

    modes = ("style", "style+layout", "full")
    refs = {mode: plain(tiny_model, style_images["blue"], mode=mode) for mode in modes}
    assert np.abs(refs["style+layout"] - refs["style"]).max() > 20 * TOL
    with graphed(tiny_model, replace(MAX_EAGER, cuda_graphs=False)):
        out = {"style": generate(tiny_model, style_images["blue"])}
        compiled = counters["stats"]["unique_graphs"]
        assert compiled > 0
        for mode in modes[1:]:
            out[mode] = generate(tiny_model, style_images["blue"], mode=mode)
        assert counters["stats"]["unique_graphs"] == compiled  # no recompilation
    for mode in modes:
        assert np.abs(out[mode] - refs[mode]).max() <= TOL, mode
    with graphed(tiny_model, replace(MAX_EAGER, compile=False)) as cache:
        for mode in modes:
            out[mode] = generate(tiny_model, style_images["blue"], mode=mode)
        assert cache.captures == 1  # one graph for every preset
    for mode in modes:
        assert np.abs(out[mode] - refs[mode]).max() <= TOL, mode


def test_a_changed_projection_is_captured_anew(tiny_model, style_images):
    """A graph's key names the image projection's modules and its weights' versions: a projection
    swapped in without new weights (same addresses, so the weights alone cannot tell) or rewritten
    in place is captured again, never replayed stale."""

    class Negated(torch.nn.Module):  # a different projection over the same weights
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return -self.inner(x)

    layers = tiny_model.pipe.unet.encoder_hid_proj.image_projection_layers
    first = layers[0]
    norm = first.norm.weight  # the projection's last LayerNorm: its gain scales the tokens
    saved = norm.detach().clone()
    red = style_images["red"]
    STRONG = dict(
        steps=1, mode="full", scale=8.0
    )  # one step in which the projection's tokens move the picture

    def flip():
        with torch.no_grad():
            norm.neg_()

    try:
        ref = plain(tiny_model, red, **STRONG)
        layers[0] = Negated(first)
        negated_ref = plain(tiny_model, red, **STRONG)
        layers[0] = first
        flip()
        flipped_ref = plain(tiny_model, red, **STRONG)
        with torch.no_grad():
            norm.copy_(saved)
        assert np.abs(negated_ref - ref).max() > 5 * TOL and np.abs(flipped_ref - ref).max() > 5 * TOL
        with graphed(tiny_model, GRAPHED) as cache:
            out = generate(tiny_model, red, **STRONG)
            layers[0] = Negated(first)
            negated = generate(tiny_model, red, **STRONG)
            assert cache.captures == 2  # another module over the same weights: a new graph
            layers[0] = first
            again = generate(tiny_model, red, **STRONG)
            assert cache.captures == 2  # the first graph again (kept)
            flip()
            flipped = generate(tiny_model, red, **STRONG)
            assert cache.captures == 3  # weights written in place: a new graph
    finally:
        layers[0] = first
        with torch.no_grad():
            norm.copy_(saved)
    for got, want in ((out, ref), (negated, negated_ref), (again, ref), (flipped, flipped_ref)):
        assert np.abs(got - want).max() <= TOL


def test_scope_restores_forward_and_processors(tiny_model, style_images):
    unet = tiny_model.pipe.unet
    before = {k: id(v) for k, v in unet.attn_processors.items()}
    with graphed(tiny_model, replace(MAX_EAGER, compile=False)):  # make_fx cannot trace dynamo's code
        generate(tiny_model, style_images["red"], steps=1)
        assert "forward" not in unet.__dict__
        with pytest.raises(RuntimeError, match="boom"), fast_path.scope(tiny_model.pipe, MAX_EAGER):
            assert "forward" in unet.__dict__
            raise RuntimeError("boom")
    assert "forward" not in unet.__dict__
    assert {k: id(v) for k, v in unet.attn_processors.items()} == before


def test_no_graphs_without_a_gpu_or_with_stateful_processors(tiny_model):
    unet = tiny_model.pipe.unet
    with fast_path.scope(tiny_model.pipe, GRAPHED) as used:  # CPU, no test capturer: plain eager
        assert not used.cuda_graphs

    class Stateful:  # e.g. a method that counts steps in Python
        def __call__(self, attn, hidden_states, *args, **kwargs):
            raise AssertionError("not called")

    unet_graphs.graph_cache(unet, graphs.TracedCapture())
    name = next(iter(unet.attn_processors))
    saved = unet.attn_processors[name]
    module = dict(unet.named_modules())[name.removesuffix(".processor")]
    try:
        assert unet_graphs.graphs_usable(unet, torch.device("cpu"))
        module.set_processor(Stateful())
        assert not unet_graphs.graphs_usable(unet, torch.device("cpu"))
    finally:
        module.set_processor(saved)
        unet_graphs.release_graphs(unet)


# ---------------------------------------------------------------------- the cache itself


def test_traced_capture_freezes_python_and_rereads_tensors():
    """What a CUDA graph does, and why scales must be tensors updated in place."""
    weight, scale, flag = torch.randn(3, 3), torch.tensor(2.0), {"on": True}

    def fn(x):
        y = x @ weight
        return y * scale if flag["on"] else y

    cache = graphs.GraphCache(graphs.TracedCapture())
    x = torch.randn(2, 3)
    assert torch.allclose(cache.call(fn, (x,), {}, "ctx"), fn(x))
    scale.fill_(5.0)
    x2 = torch.randn(2, 3)
    assert torch.allclose(cache.call(fn, (x2,), {}, "ctx"), fn(x2))  # tensor data: followed
    flag["on"] = False
    assert torch.allclose(cache.call(fn, (x2,), {}, "ctx"), x2 @ weight * 5.0)  # Python: frozen
    assert cache.captures == 1
    assert not torch.allclose(
        cache.call(fn, (x2,), {}, "other"), x2 @ weight * 5.0
    )  # new context: recaptured


def test_outputs_are_clones_and_keys_follow_shapes():
    cache = graphs.GraphCache(graphs.TracedCapture(), max_graphs=2)
    a = cache.call(lambda x: x * 2, (torch.ones(2),), {}, 0)
    b = cache.call(lambda x: x * 2, (torch.full((2,), 3.0),), {}, 0)
    assert a.tolist() == [2.0, 2.0] and b.tolist() == [6.0, 6.0]  # the second replay left the first alone
    cache.call(lambda x: x * 2, (torch.ones(3),), {}, 0)
    cache.call(lambda x: x * 2, (torch.ones(4),), {}, 0)
    assert cache.captures == 3 and len(cache.graphs) == 2  # least recently used dropped
    assert (
        cache.call(lambda x, o: x, (torch.ones(1), {1}), {}, 0) is graphs.UNCACHEABLE
    )  # unhashable argument (a set)


def test_python_number_timesteps_become_tensors():
    args, kwargs = graphs.timestep_as_tensor((torch.zeros(1), 981), {}, torch.device("cpu"))
    assert args[1].dtype == torch.int64 and int(args[1]) == 981
    args, kwargs = graphs.timestep_as_tensor((torch.zeros(1),), {"timestep": 12.5}, torch.device("cpu"))
    assert kwargs["timestep"].dtype == torch.float64
    t = torch.tensor(3.0)
    assert graphs.timestep_as_tensor((torch.zeros(1), t), {}, torch.device("cpu"))[0][1] is t


def test_a_refused_capture_falls_back_to_eager_once(tiny_model, style_images, caplog):
    """A capture the driver refuses (e.g. a kernel that cannot be captured) must not fail the
    generation: the model goes on without graphs, and says so once."""
    calls = []

    def refuse(fn, device):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    ref = plain(tiny_model, style_images["red"])
    unet = tiny_model.pipe.unet
    saved = tiny_model.speed
    unet_graphs.graph_cache(unet, refuse)
    tiny_model.speed = GRAPHED
    try:
        with caplog.at_level("WARNING", logger="instantstyle.fast.unet_graphs"):
            out = generate(tiny_model, style_images["red"])
            again = generate(tiny_model, style_images["red"])
    finally:
        tiny_model.speed = saved
        unet_graphs.release_graphs(unet)
    assert len(calls) == 1  # tried once, then not again
    assert "CUDA graphs disabled" in caplog.text and "not permitted" in caplog.text
    assert np.abs(out - ref).max() <= TOL and np.abs(again - ref).max() <= TOL
