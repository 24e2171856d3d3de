"""Snapshots of a loaded model's mutable state, to test that a scoped patch left it exactly as found."""

from __future__ import annotations


def snapshot(model) -> dict:
    """Processors, IP-Adapter scales, module tree, patched forwards, grad flags, attributes, weights."""
    from ..adapter import ip_processors

    unet = model.pipe.unet
    return {
        "processors": {n: id(p) for n, p in unet.attn_processors.items()},
        "ip_scales": {n: list(p.scale) for n, p in ip_processors(unet).items()},
        "modules": [(n, type(m).__name__, id(m)) for n, m in unet.named_modules()],
        "forwards": [n for n, m in unet.named_modules() if "forward" in vars(m)],
        "grads": {n: p.requires_grad for n, p in unet.named_parameters()},
        "attrs": sorted(vars(unet)),
        "scheduler": id(model.pipe.scheduler),
        "weights": {n: p.detach().clone() for n, p in unet.state_dict().items()},
    }


def assert_same(before: dict, after: dict) -> None:
    import torch

    before, after = dict(before), dict(after)
    weights_b, weights_a = before.pop("weights"), after.pop("weights")
    assert before == after
    assert weights_b.keys() == weights_a.keys()
    assert all(torch.equal(weights_b[k], weights_a[k]) for k in weights_b)
