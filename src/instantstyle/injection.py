"""Where a request's images enter beyond "the reference, in the conditional branch, every step".

The controls that ComfyUI_IPAdapter_plus (``IPAdapterAdvanced``: "style transfer precise",
``image_composition``, ``image_negative``, ``start_at``/``end_at``) and InvokeAI (``style_precise``,
``begin/end_step_percent``) users rely on, re-implemented on diffusers' own inputs (behaviour read
from those projects; no code taken):

- **Slots.** Every image token set a call uses is one entry of diffusers' multi-adapter inputs
  (``ip_adapter_image_embeds`` + one scale map per adapter). Slot 0 is the loaded adapter; further
  slots share *all* its weights (``shared_slots``: the same projection and ``to_k_ip``/``to_v_ip``
  modules, nothing copied or loaded again, the image encoder runs once per image):
  ``"composition"`` (a second image, the layout block), ``"uncond"`` (the reference in the
  unconditional half only: precise mode), ``"both"`` (the reference in both halves), ``"unused"``
  (scale 0 everywhere: ``fixed_slots``).
- **One structure on the uniform fast path.** Where every IP layer keeps an image branch for
  every slot (``--speed graphs``/``max``: one CUDA graph, one compiled UNet), a call with fewer
  than ``FIXED_SLOTS`` token sets is padded with ``"unused"`` slots (the first slot's embedding, the
  shared weights, scale 0: the branch adds exactly 0). So style, style+layout, strong, precise,
  composition, a composition image, a negative image and any window all replay one graph. Cost:
  one more 4-token image branch per IP layer on that path; none elsewhere (a 0 scale skips it).
- **Branch "uncond".** Its projection (``SlotProjection`` at gain 0) returns zero tokens for the
  conditional half of the CFG batch; its embeddings put the reference in the unconditional half.
  So at that block the conditional branch sees zero image tokens (``to_k_ip``/``to_v_ip`` have no
  bias: the image attention adds exactly 0) and the unconditional branch the reference's.
- **Negative image.** Its CLIP embedding (before the projection, times ``negative_style_scale``)
  replaces the zeros of the unconditional half (``embeddings.with_unconditional``).
- **Step window** (``StepWindow``): the IP scales are set to 0 outside ``START <= i/N < END``
  from the pipeline's ``callback_on_step_end``, in place: the stock processors' ``scale`` lists and
  the fast path's 0-d scale tensors (``processors.fast.FastAttention``), so compiled code and captured
  CUDA graphs see new data, never new structure.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Sequence

import torch

from .errors import InstantStyleError

SLOT_KINDS = ("style", "composition", "uncond", "both", "unused")
FIXED_SLOTS = 2  # token sets of every single-adapter call on the uniform fast path (style + one)


class SlotProjection(torch.nn.Module):
    """The first adapter's image projection for an extra slot, with a gain on the conditional half.

    diffusers flattens ``[2B, n_img, D]`` embeddings (unconditional rows first) to ``[2B*n_img, D]``
    before the projection, so the conditional half is the second half of the rows. ``cond_gain`` is
    a 0-d tensor set in place per call: 0 for an ``"uncond"`` slot (zero tokens in the conditional
    half), 1 otherwise (multiplying by 1 is exact). Every slot kind therefore has the same
    structure, and a compiled graph or captured CUDA graph serves them all.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.cond_gain: torch.Tensor | None = None

    def set_gain(self, value: float) -> None:
        param = next(self.inner.parameters())
        if (
            self.cond_gain is None
            or self.cond_gain.device != param.device
            or self.cond_gain.dtype != param.dtype
        ):
            with torch.inference_mode(False):
                self.cond_gain = torch.ones((), device=param.device, dtype=param.dtype)
        with torch.no_grad():
            self.cond_gain.fill_(value)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.inner(image_embeds)  # [2B*n, T, C]
        rows, half = tokens.shape[0], tokens.shape[0] // 2
        gain = torch.cat([tokens.new_ones(half), self.cond_gain.to(tokens.dtype).expand(rows - half)])
        return tokens * gain[:, None, None]


_SLOT_PROJECTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # projection -> [SlotProjection]


def _projection(first: torch.nn.Module, position: int) -> SlotProjection:
    """The ``position``-th extra slot's projection, made once (compiled guards and graphs stay valid)."""
    made = _SLOT_PROJECTIONS.setdefault(first, [])
    while len(made) <= position:
        made.append(SlotProjection(first))
    return made[position]


@contextlib.contextmanager
def shared_slots(unet, kinds: Sequence[str]):
    """Extra IP-Adapter slots sharing every weight of the first, for the duration of the block.

    Appends, per kind, the first adapter's image projection (through ``SlotProjection``, whose
    conditional half is zeroed for ``"uncond"``) and each processor's ``to_k_ip``/``to_v_ip``
    modules (the same objects) as a new adapter at scale 0. Removed in ``finally``: the model is
    left with the adapters it had.
    """
    from .adapter import ip_processors

    kinds = list(kinds)
    if not kinds:
        yield
        return
    unknown = [k for k in kinds if k not in SLOT_KINDS[1:]]
    if unknown:
        raise InstantStyleError(
            f"unknown IP-Adapter slot kind {unknown[0]!r}; use one of {', '.join(SLOT_KINDS[1:])}"
        )
    procs = ip_processors(unet)
    layers = unet.encoder_hid_proj.image_projection_layers
    first = layers[0]
    n = len(layers)
    for position, kind in enumerate(kinds):
        projection = _projection(first, position)
        projection.set_gain(0.0 if kind == "uncond" else 1.0)
        layers.append(projection)
    for proc in procs.values():
        proc.to_k_ip.extend([proc.to_k_ip[0]] * len(kinds))
        proc.to_v_ip.extend([proc.to_v_ip[0]] * len(kinds))
        proc.num_tokens = [*proc.num_tokens, *[proc.num_tokens[0]] * len(kinds)]
        proc.scale = [*proc.scale, *[0.0] * len(kinds)]
    try:
        yield
    finally:
        del layers[n:]
        for proc in procs.values():
            del proc.to_k_ip[n:]
            del proc.to_v_ip[n:]
            proc.num_tokens = proc.num_tokens[:n]
            proc.scale = proc.scale[:n]


def fixed_slots(
    kinds: Sequence[str], embeds: Sequence[torch.Tensor], scales: Sequence, n_loaded: int
) -> tuple[list[str], list[torch.Tensor], list]:
    """``kinds``/``embeds``/``scales`` padded to ``FIXED_SLOTS`` with ``"unused"`` slots.

    For the paths that keep every slot's image branch in every IP layer (``fast.uniform_ip``):
    the structure a CUDA graph or compiled UNet bakes in is then the same for every request with
    at most ``FIXED_SLOTS`` token sets. An unused slot carries the first slot's embedding (same
    shape, finite) at scale 0 in every processor, so its branch adds exactly 0. Only for a single
    loaded adapter (a second loaded one, Plus's content adapter, fixes its own structure).
    """
    kinds, embeds, scales = list(kinds), list(embeds), list(scales)
    if n_loaded != 1 or not kinds or len(kinds) >= FIXED_SLOTS:
        return kinds, embeds, scales
    pad = FIXED_SLOTS - len(kinds)
    return kinds + ["unused"] * pad, embeds + [embeds[0]] * pad, scales + [{} for _ in range(pad)]


# ---------------------------------------------------------------------- the step window


def window_steps(window: tuple[float, float], n_steps: int) -> range:
    """The step indices ``i`` of ``n_steps`` with ``START <= i/N < END`` (rounding-safe)."""
    start, end = window
    eps = 1e-9
    return range(max(0, math.ceil(start * n_steps - eps)), min(n_steps, math.ceil(end * n_steps - eps)))


class StepWindow:
    """``callback_on_step_end`` that switches every IP scale off outside the window, in place.

    ``begin(unet)`` is called inside the fast-path scope, just before the pipeline: it sets the
    state of step 0 (off when START > 0). After step ``i`` the callback sets the state of step
    ``i + 1`` from ``pipe.num_timesteps`` (the steps really run, e.g. fewer under img2img).
    ``end()`` restores every value it changed. Stock diffusers' IPAdapterScaleCutoffCallback with
    ``cutoff_step_index = K - 1`` equals the window ``0:K/N``.
    """

    def __init__(self, window: tuple[float, float], inner=None):
        self.window = (float(window[0]), float(window[1]))
        self.inner = inner  # the callback it wraps (progress, previews)
        self.unet = None
        self.saved: dict[int, tuple[object, list]] = {}  # id(processor) -> (processor, saved scales)
        self.on = True
        self.states: list[bool] = []  # the state each step ran with (for tests and metadata)

    @property
    def is_full(self) -> bool:
        return self.window == (0.0, 1.0)

    def begin(self, unet) -> None:
        self.unet = unet
        self._set(self.window[0] == 0.0)

    def active(self, i: int, n_steps: int) -> bool:
        return i in window_steps(self.window, n_steps)

    def __call__(self, pipe, i, t, cb_kwargs):
        self.states.append(self.on)
        self._set(self.active(i + 1, int(getattr(pipe, "num_timesteps", 0) or 0)))
        if self.inner is not None:
            cb_kwargs = self.inner(pipe, i, t, cb_kwargs)
        return cb_kwargs

    def _set(self, on: bool) -> None:
        if on == self.on:
            return
        for proc in self.unet.attn_processors.values():
            stock = isinstance(getattr(proc, "scale", None), list) and hasattr(proc, "to_k_ip")
            tensors = [entry[3] for entry in getattr(proc, "ip", ())]  # processors.fast.FastAttention
            if not (stock or tensors):
                continue
            if not on:
                if stock:
                    self.saved[id(proc)] = (proc, list(proc.scale))
                    proc.scale = [[0.0] * len(s) if isinstance(s, list) else 0.0 for s in proc.scale]
                else:
                    self.saved[id(proc)] = (proc, [t.clone() for t in tensors])
                    with torch.no_grad():
                        for t in tensors:
                            t.zero_()
            elif id(proc) in self.saved:
                self._restore(*self.saved.pop(id(proc)))
        self.on = on

    @staticmethod
    def _restore(proc, values) -> None:
        if isinstance(getattr(proc, "scale", None), list) and hasattr(proc, "to_k_ip"):
            proc.scale = values
            return
        with torch.no_grad():
            for entry, value in zip(getattr(proc, "ip", ()), values, strict=True):
                entry[3].copy_(value)

    @contextlib.contextmanager
    def active_in(self, unet):
        """``begin`` now, ``end`` on the way out (even on error); nothing for the full window."""
        if self.is_full:
            yield self
            return
        self.begin(unet)
        try:
            yield self
        finally:
            self.end()

    def end(self) -> None:
        for proc, values in self.saved.values():
            self._restore(proc, values)
        self.saved.clear()
        self.on = True
