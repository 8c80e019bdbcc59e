"""The trainable part of MetamerGen: two Perceiver resamplers and decoupled cross-attention K/V.

Built from diffusers' own IP-Adapter machinery:

* each stream's resampler is an :class:`~diffusers.models.embeddings.IPAdapterPlusImageProjection`
  (IP-Adapter-Plus Perceiver) that compresses ``T`` DINOv2 tokens (1024) into ``num_tokens`` (32)
  tokens of the UNet's cross-attention width (768 for SD1.5);
* every UNet cross-attention layer gets diffusers' multi-IP-Adapter processor
  (:class:`~diffusers.models.attention_processor.IPAdapterAttnProcessor2_0`, or its xformers twin)
  with one K/V pair per stream, computing
  ``Attn(Q, K_text, V_text) + scale_f * Attn(Q, K_f, V_f) + scale_p * Attn(Q, K_p, V_p)``.

The K/V projections are owned by :class:`MetamerGenAdapters` and *shared* with the processors it
installs, so the adapters are one saveable module while the UNet stays a stock UNet. The resamplers
run outside the UNet, once per sample rather than once per denoising step: the UNet receives
``encoder_hidden_states=(text_embeds, [foveal_tokens, peripheral_tokens])``.

With ``foveal_gate`` (opt-in, not in the paper) the foveal term is multiplied by the fovea's patch
mask on each layer's grid (:class:`FovealGateAttnProcessor`), so the fovea acts only where it
looked; callers pass the mask through :meth:`MetamerGenAdapters.gating`. With ``foveal_local``
(opt-in, not in the paper) the foveal resampler runs on each shown patch's token alone and every
latent cell attends only to the tokens resampled from the patches under it
(:class:`LocalAttnProcessor`): each fixated patch's content stays at that patch;
``peripheral_local`` does the same for the periphery's patches.

A stream whose scale is 0 is skipped by the processor (stream off); to drop a stream's *condition*
(training dropout, the unconditional branch of guidance) feed the resampler zero tokens instead.

Anything that replaces the UNet's processors (``set_default_attn_processor``, ``set_attn_processor``,
``fuse_qkv_projections``, attention slicing) removes the adapters' processors. :meth:`~MetamerGenAdapters.applied`
puts them back into the cross-attention layers for the duration of a ``with`` block and restores the
UNet's own processors afterwards; the pipeline renders inside it, so such swaps are transparent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
    XFormersAttnProcessor,
)
from torch import nn

from metamergen.adapters.resampler import build_resampler
from metamergen.defaults import NUM_TOKENS

AttentionBackend = Literal["sdpa", "xformers"]
STREAMS = ("foveal", "peripheral")

__all__ = [
    "STREAMS",
    "AttentionBackend",
    "FovealGateAttnProcessor",
    "LocalAttnProcessor",
    "MetamerGenAdapters",
    "cross_attention_layers",
]

#: Where the adapters are saved from and loaded by diffusers (``model_index.json`` records this
#: module path): pinned to the public package, so a saved folder does not depend on file layout.
SERIALIZED_MODULE = "metamergen.adapters"


class _KVProjection(nn.Linear):
    """A stream's K or V projection in one cross-attention layer (an ``nn.Linear``, same weights).

    Computes in its weights' dtype and returns its input's, so fp32 trainable K/V work inside a
    bf16 / fp16 UNet without autocast: callers pass the stream's tokens in the UNet's dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 trainable K/V meet the UNet's dtype at this one edge, so every processor works without autocast
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, int, int]]:
    """The UNet's cross-attention layers in ``unet.attn_processors`` order (down, up, mid).

    Returns
    -------
    list of (processor_name, hidden_size, cross_attention_dim)
    """
    layers = []
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        layers.append((name, attn.to_k.out_features, attn.to_k.in_features))
    if not layers:
        raise ValueError("This UNet has no cross-attention layers (attn2); MetamerGen needs a text-conditioned UNet.")
    return layers


class MetamerGenAdapters(ModelMixin, ConfigMixin):
    """Foveal and peripheral resamplers plus one K/V pair per stream in every cross-attention layer.

    Parameters
    ----------
    layer_names
        Processor names of the UNet's cross-attention layers, in ``unet.attn_processors`` order.
    hidden_sizes
        Each layer's attention width (output of its K/V projections).
    cross_attention_dim
        UNet cross-attention width: the resamplers' output width and the K/V input width (768 for SD1.5).
    image_embed_dim
        Width of the encoder's tokens (768 for DINOv2-Base).
    num_tokens
        Tokens per stream after resampling (32 in the paper).
    resampler_hidden_dim, resampler_depth, resampler_heads, resampler_dim_head, resampler_ffn_ratio
        Perceiver shape; not published by the paper, so IP-Adapter-Plus's SD1.5 values are the
        defaults (768, 4, 12, 64, 4). diffusers' IP-Adapter weight converter requires depth 4,
        dim_head 64 and ffn ratio 4 for the exported files to load.
    mask_empty_tokens
        Leave tokens that are exactly zero (outside the fovea; every token of a dropped stream) out
        of the resamplers' attention keys (:mod:`metamergen.adapters.resampler`). False (default):
        IP-Adapter-Plus as published, where the zeros take part. Not in the paper; the demo model
        needs it (docs/design.md, "The demo model").
    foveal_gate
        Let the foveal stream reach only the latent cells under the patches it shows: its
        attention output is multiplied by the fovea's patch mask (the non-zero foveal tokens,
        carried onto each layer's grid, :class:`FovealGateAttnProcessor`), so a dropped fovea adds
        nothing anywhere. False (default): the paper's decoupled cross-attention, where every
        spatial query attends to the foveal tokens. Not in the paper: softmax attention over the
        foveal resampler's tokens gives every query some foveal content, and a small UNet may not
        be able to tell from its features where a token belongs. Callers run the UNet inside
        :meth:`gating` with :meth:`foveal_region` of the foveal tokens.
    foveal_gate_dilation
        With ``foveal_gate``, widen the region by this many patches on each side (0 = the shown
        patches only).
    foveal_local
        Bind each fixated patch's content to its place: the foveal resampler runs on every shown
        patch's token alone (``num_tokens`` tokens per patch; the other patches give none), and
        each latent cell attends only to the tokens of the shown patches its area overlaps
        (:class:`LocalAttnProcessor`); a cell over no shown patch gets no foveal term, as
        under ``foveal_gate``. False (default): the paper's resampler over the whole masked grid.
        Not in the paper: with the gate alone the 16 resampled tokens mix all fixated patches, and
        a gated cell paints another fixated object's colour as often as its own. Adds no weights.
        Callers run the UNet inside :meth:`gating` with :meth:`foveal_region`, as for the gate.
    peripheral_local
        The same binding for the peripheral stream: every patch of the blurred scene is resampled
        alone and each latent cell attends to its own patches' tokens (all patches are shown; a
        dropped periphery, all zeros, adds nothing). False (default): the paper's resampler over
        the whole grid. Not in the paper; adds no weights.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        layer_names: list[str],
        hidden_sizes: list[int],
        cross_attention_dim: int = 768,
        image_embed_dim: int = 768,
        num_tokens: int = NUM_TOKENS,
        resampler_hidden_dim: int = 768,
        resampler_depth: int = 4,
        resampler_heads: int = 12,
        resampler_dim_head: int = 64,
        resampler_ffn_ratio: float = 4.0,
        mask_empty_tokens: bool = False,
        foveal_gate: bool = False,
        foveal_gate_dilation: int = 0,
        foveal_local: bool = False,
        peripheral_local: bool = False,
    ) -> None:
        super().__init__()
        if len(layer_names) != len(hidden_sizes):
            raise ValueError(f"Got {len(layer_names)} layer names but {len(hidden_sizes)} hidden sizes.")
        if foveal_gate_dilation < 0:
            raise ValueError(f"foveal_gate_dilation must be >= 0 patches, got {foveal_gate_dilation}.")
        if foveal_local and foveal_gate_dilation:
            raise ValueError("foveal_local binds each patch's tokens to that patch; it takes no foveal_gate_dilation.")

        def projections() -> nn.ModuleList:
            return nn.ModuleList(_KVProjection(cross_attention_dim, h, bias=False) for h in hidden_sizes)

        shape = dict(
            image_embed_dim=image_embed_dim,
            cross_attention_dim=cross_attention_dim,
            num_tokens=num_tokens,
            hidden_dim=resampler_hidden_dim,
            depth=resampler_depth,
            heads=resampler_heads,
            dim_head=resampler_dim_head,
            ffn_ratio=resampler_ffn_ratio,
        )
        self.foveal_resampler = build_resampler(**shape)
        self.peripheral_resampler = build_resampler(**shape)
        self.to_k_foveal, self.to_v_foveal = projections(), projections()
        self.to_k_peripheral, self.to_v_peripheral = projections(), projections()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_unet(cls, unet: nn.Module, *, image_embed_dim: int = 768, **config) -> MetamerGenAdapters:
        """New adapters shaped for ``unet``, each stream's K/V initialised from the text K/V (paper).

        ``config`` takes the remaining constructor arguments (``num_tokens``, ``resampler_*``).
        """
        layers = cross_attention_layers(unet)
        adapters = cls(
            layer_names=[n for n, _, _ in layers],
            hidden_sizes=[h for _, h, _ in layers],
            cross_attention_dim=layers[0][2],
            image_embed_dim=image_embed_dim,
            **config,
        )
        with torch.no_grad():
            for i, (name, _, _) in enumerate(layers):
                attn = unet.get_submodule(name[: -len(".processor")])
                for k, v in (
                    (adapters.to_k_foveal, adapters.to_v_foveal),
                    (adapters.to_k_peripheral, adapters.to_v_peripheral),
                ):
                    k[i].weight.copy_(attn.to_k.weight)
                    v[i].weight.copy_(attn.to_v.weight)
        adapters.to(unet.device)
        if unet.dtype != adapters.dtype:  # only then: diffusers' to(dtype=...) always logs a warning
            adapters.to(dtype=unet.dtype)
        return adapters

    # ------------------------------------------------------------------ forward pieces

    def project(
        self,
        foveal_tokens: torch.Tensor,
        peripheral_tokens: torch.Tensor,
        *,
        active: tuple[bool, bool] = (True, True),
    ) -> list[torch.Tensor]:
        """Resample both streams.

        Parameters
        ----------
        foveal_tokens, peripheral_tokens
            ``(B, T, image_embed_dim)`` encoder tokens (foveal: masked, zeros outside the fovea).
        active
            Which streams to resample. An inactive stream (scale 0: the attention processor skips
            it) gets zeros of the output shape instead of a resampler pass.

        Returns
        -------
        list of two torch.Tensor
            ``[foveal, peripheral]``, each ``(B, num_tokens, cross_attention_dim)``: the second
            element of the UNet's ``encoder_hidden_states`` tuple. An active stream made local
            (``foveal_local``, ``peripheral_local``) is ``(B, T * num_tokens, cross_attention_dim)``
            instead: patch ``t``'s tokens at rows ``t * num_tokens ...``, zeros for the patches not
            shown (all-zero tokens).
        """
        out = []
        for tokens, resampler, on, local in zip(
            (foveal_tokens, peripheral_tokens),
            (self.foveal_resampler, self.peripheral_resampler),
            active,
            self._local_streams,
        ):
            if on and local:
                out.append(self._resample_each_patch(tokens, resampler))
            elif on:
                key_mask = tokens.ne(0).any(dim=-1) if self.config.mask_empty_tokens else None
                out.append(resampler(tokens, key_mask))
            else:
                shape = (tokens.shape[0], self.config.num_tokens, self.config.cross_attention_dim)
                out.append(torch.zeros(shape, device=tokens.device, dtype=tokens.dtype))
        return out

    @property
    def _local_streams(self) -> tuple[bool, bool]:
        """``(foveal_local, peripheral_local)``."""
        return bool(self.config.foveal_local), bool(self.config.peripheral_local)

    def _resample_each_patch(self, tokens: torch.Tensor, resampler: nn.Module) -> torch.Tensor:
        """``(B, T, D)`` masked tokens -> ``(B, T * num_tokens, C)``: each shown token resampled alone."""
        b, t, _ = tokens.shape
        n, c = self.config.num_tokens, self.config.cross_attention_dim
        shown = tokens.ne(0).any(dim=-1)  # (B, T)
        out = tokens.new_zeros(b, t, n, c)
        if shown.any():  # a lone token: the resampler's keys are that token and its own queries
            out[shown] = resampler(tokens[shown][:, None]).to(out.dtype)
        return out.reshape(b, t * n, c)

    def foveal_region(self, foveal_tokens: torch.Tensor) -> torch.Tensor | None:
        """Where the foveal stream may act under ``foveal_gate``: the patches it shows.

        Parameters
        ----------
        foveal_tokens
            ``(B, T, image_embed_dim)`` masked encoder tokens, ``T = G * G`` in grid order (zero
            outside the fovea; all zero for a dropped stream).

        Returns
        -------
        torch.Tensor or None
            ``(B, 1, G, G)`` float, 1 on the patches whose token is non-zero, widened by
            ``foveal_gate_dilation`` patches; ``None`` unless the adapters gate the fovea or make
            a stream local.
        """
        if not self._needs_gating:
            return None
        b, t = foveal_tokens.shape[:2]
        g = math.isqrt(t)
        if g * g != t:
            raise ValueError(f"The foveal gate needs a square token grid; got {t} tokens.")
        region = foveal_tokens.ne(0).any(dim=-1).reshape(b, 1, g, g).float()
        d = int(self.config.foveal_gate_dilation)
        if d:
            region = F.max_pool2d(region, 2 * d + 1, stride=1, padding=d)
        return region

    @property
    def _needs_gating(self) -> bool:
        """True when the processors need :meth:`gating` (``foveal_gate``, ``foveal_local`` or ``peripheral_local``)."""
        return bool(self.config.foveal_gate or any(self._local_streams))

    @contextmanager
    def gating(self, unet: nn.Module, region: torch.Tensor | None, latent_size: tuple[int, int]) -> Iterator[None]:
        """Run ``unet`` with the foveal stream confined to ``region`` for a ``with`` block.

        A no-op unless ``foveal_gate``, ``foveal_local`` or ``peripheral_local`` is on. Then every
        cross-attention processor must be a :class:`FovealGateAttnProcessor` (or its subclass
        :class:`LocalAttnProcessor`), installed by :meth:`install` / :meth:`applied`.

        Parameters
        ----------
        unet
            The UNet these adapters are installed in.
        region
            ``(B, 1, G, G)`` from :meth:`foveal_region`, one row per sample of the UNet's batch
            (the unconditional half of guidance: zeros, as its fovea is dropped).
        latent_size
            ``(h, w)`` of the UNet's input latents; the region frames the same image.
        """
        if not self._needs_gating:
            yield
            return
        if region is None:
            raise ValueError("These adapters gate the foveal stream (foveal_gate): pass foveal_region(foveal_tokens).")
        procs = unet.attn_processors
        layers = [procs[n] for n in self.config.layer_names]
        if not all(isinstance(p, FovealGateAttnProcessor) for p in layers):
            raise RuntimeError("foveal_gate needs the adapters' gated processors installed: run inside applied().")
        for p in layers:
            p.region, p.latent_size = region, (int(latent_size[0]), int(latent_size[1]))
        try:
            yield
        finally:
            for p in layers:
                p.region, p.latent_size = None, None

    # ------------------------------------------------------------------ UNet wiring

    def install(
        self,
        unet: nn.Module,
        *,
        foveal_scale: float = 1.0,
        peripheral_scale: float = 1.0,
        attention: AttentionBackend = "sdpa",
        keep_other_processors: bool = False,
    ) -> None:
        """Put the decoupled cross-attention processors into ``unet``, sharing this module's K/V.

        Parameters
        ----------
        unet
            The UNet these adapters were built for.
        foveal_scale, peripheral_scale
            The stream scales the new processors start with.
        attention
            Backend of the cross-attention processors: ``"sdpa"`` or ``"xformers"``.
        keep_other_processors
            False (default): self-attention layers get the plain processor of the same backend.
            True: they keep the processor they have (e.g. sliced or fused attention set by the user).

        Call again after anything that replaces the UNet's processors (the pipeline does so for
        xformers and attention slicing, and renders inside :meth:`applied`).
        """
        names = [n for n, _, _ in cross_attention_layers(unet)]
        if names != list(self.config.layer_names):
            raise ValueError(
                "These adapters were built for a different UNet: its cross-attention layers differ "
                f"({len(self.config.layer_names)} expected, {len(names)} found). Build adapters with "
                "MetamerGenAdapters.from_unet(unet) or load the ones trained for this UNet."
            )
        ip_cls, plain_cls = _processor_classes(
            attention, gate=bool(self.config.foveal_gate), local=any(self._local_streams)
        )
        index = {n: i for i, n in enumerate(names)}
        current = unet.attn_processors
        processors = {}
        for name in current:
            if name in index:
                processors[name] = self._cross_processor(index[name], ip_cls, foveal_scale, peripheral_scale)
            else:
                processors[name] = current[name] if keep_other_processors else plain_cls()
        unet.set_attn_processor(processors)

    def _cross_processor(self, i: int, ip_cls: type, foveal_scale: float, peripheral_scale: float) -> nn.Module:
        """Layer ``i``'s two-stream processor around this module's K/V."""
        proc = ip_cls(
            hidden_size=self.config.hidden_sizes[i],
            cross_attention_dim=self.config.cross_attention_dim,
            num_tokens=[self.config.num_tokens] * 2,
            scale=[float(foveal_scale), float(peripheral_scale)],
        )
        proc.to_k_ip = nn.ModuleList([self.to_k_foveal[i], self.to_k_peripheral[i]])
        proc.to_v_ip = nn.ModuleList([self.to_v_foveal[i], self.to_v_peripheral[i]])
        if isinstance(proc, LocalAttnProcessor):
            proc.local, proc.gate_fovea = self._local_streams, bool(self.config.foveal_gate)
        return proc

    def uninstall(self, unet: nn.Module) -> None:
        """Give ``unet`` plain processors again (e.g. before saving it without orphan adapter weights)."""
        xformers = any(isinstance(p, IPAdapterXFormersAttnProcessor) for p in unet.attn_processors.values())
        unet.set_attn_processor(XFormersAttnProcessor() if xformers else AttnProcessor2_0())

    def is_installed(self, unet: nn.Module) -> bool:
        """True when every cross-attention layer of ``unet`` uses this module's K/V (not copies)."""
        procs = unet.attn_processors
        for i, name in enumerate(self.config.layer_names):
            p = procs.get(name)
            if (
                not hasattr(p, "to_k_ip")
                or len(p.to_k_ip) != 2
                or p.to_k_ip[0] is not self.to_k_foveal[i]
                or p.to_k_ip[1] is not self.to_k_peripheral[i]
                or p.to_v_ip[0] is not self.to_v_foveal[i]
                or p.to_v_ip[1] is not self.to_v_peripheral[i]
                or (self._needs_gating and not isinstance(p, FovealGateAttnProcessor))
                or (any(self._local_streams) and not isinstance(p, LocalAttnProcessor))
            ):
                return False
        return True

    def set_scale(self, unet: nn.Module, foveal: float, peripheral: float) -> None:
        """Set the per-stream scales (λ_f, λ_p) in every installed processor; 0 turns a stream off."""
        procs = unet.attn_processors
        for name in self.config.layer_names:
            procs[name].scale = [float(foveal), float(peripheral)]

    @contextmanager
    def scaled(self, unet: nn.Module, foveal: float, peripheral: float) -> Iterator[None]:
        """Set the stream scales for the duration of a ``with`` block, then restore the previous
        ones (so a render inside training does not change the scales training runs with)."""
        procs = unet.attn_processors
        before = [list(procs[n].scale) for n in self.config.layer_names]
        self.set_scale(unet, foveal, peripheral)
        try:
            yield
        finally:
            for name, scale in zip(self.config.layer_names, before):
                procs[name].scale = scale

    @contextmanager
    def applied(
        self,
        unet: nn.Module,
        foveal: float,
        peripheral: float,
        *,
        attention: AttentionBackend | None = None,
    ) -> Iterator[None]:
        """The adapters' processors in every cross-attention layer at scales (λ_f, λ_p) for a ``with``
        block; afterwards ``unet`` has exactly the processors it had before.

        When the adapters are installed this only sets and restores the scales (:meth:`scaled`).
        Otherwise (the user called ``set_default_attn_processor``, ``set_attn_processor``,
        ``fuse_qkv_projections`` or attention slicing) the cross-attention layers get the adapters'
        processors for the block, the other layers keep the user's, and the user's processors are
        put back after it, also on error, as diffusers' PAG pipelines do.

        Parameters
        ----------
        unet
            The UNet these adapters were built for.
        foveal, peripheral
            λ_f and λ_p; 0 switches a stream off.
        attention
            Backend of the temporary cross-attention processors; ``None`` takes xformers where the
            layer's current processor is an xformers one, else SDPA.
        """
        if self.is_installed(unet):
            with self.scaled(unet, foveal, peripheral):
                yield
            return
        before = unet.attn_processors
        if attention is None:
            xformers = any(isinstance(before.get(n), _XFORMERS) for n in self.config.layer_names)
            attention = "xformers" if xformers else "sdpa"
        self.install(
            unet, foveal_scale=foveal, peripheral_scale=peripheral, attention=attention, keep_other_processors=True
        )
        try:
            yield
        finally:
            unet.set_attn_processor(dict(before))  # set_attn_processor pops from the dict it is given


_XFORMERS = (XFormersAttnProcessor, IPAdapterXFormersAttnProcessor)


class FovealGateAttnProcessor(IPAdapterAttnProcessor2_0):
    """The two-stream SDPA processor with the foveal stream confined to a region (``foveal_gate``).

    ``out = Attn(Q, K_text, V_text) + scale_f * m * Attn(Q, K_f, V_f) + scale_p * Attn(Q, K_p, V_p)``
    where ``m`` is :attr:`region` carried onto this layer's grid (nearest patch of each cell's
    centre, as :func:`metamergen.foveation.fovea.token_cells`), through diffusers' own IP-Adapter
    mask route. :meth:`MetamerGenAdapters.gating` sets :attr:`region` and :attr:`latent_size`
    for a UNet call; a call without them is refused rather than run ungated.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.region: torch.Tensor | None = None  # (B, 1, G, G)
        self.latent_size: tuple[int, int] | None = None  # (h, w) of the UNet's input

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_call(ip_adapter_masks, "gate the foveal stream (foveal_gate)")
        text, (foveal, peripheral) = encoder_hidden_states
        b = hidden_states.shape[0]
        n = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if self.region.shape[0] != b:
            raise ValueError(f"The foveal region has {self.region.shape[0]} rows for a batch of {b}.")
        size = _layer_grid(self.latent_size, n)
        mask = F.interpolate(self.region.to(hidden_states), size=size, mode="nearest-exact")  # (B, 1, h, w)
        # diffusers resamples the mask bicubically to the layer's grid: the identity at equal sizes
        return super().__call__(
            attn,
            hidden_states,
            (text, [foveal[:, None], peripheral]),
            attention_mask=attention_mask,
            temb=temb,
            scale=scale,
            ip_adapter_masks=[mask, None],
        )

    def _check_call(self, ip_adapter_masks: object, what: str) -> None:
        """Refuse a call outside :meth:`MetamerGenAdapters.gating` or with diffusers' own IP-Adapter masks."""
        if self.region is None or self.latent_size is None:
            raise RuntimeError(
                f"These adapters {what}; run the UNet inside "
                "adapters.gating(unet, adapters.foveal_region(foveal_tokens), latent_size)."
            )
        if ip_adapter_masks is not None:
            raise ValueError(f"These adapters {what}, which takes the place of ip_adapter_masks; pass none.")


class LocalAttnProcessor(FovealGateAttnProcessor):
    """The two-stream SDPA processor with a stream's attention bound to each cell's own patches
    (``foveal_local``, ``peripheral_local``).

    ``out = Attn(Q, K_text, V_text) + scale_f * A_f + scale_p * A_p``. For a local stream, ``A`` at a
    cell is attention over the tokens of the shown patches that the cell's area overlaps (each
    patch's ``num_tokens`` tokens from :meth:`MetamerGenAdapters.project`), and 0 at a cell over no
    shown patch. The fovea's shown patches are :attr:`region`; the periphery's are those whose
    tokens are not all zero (every patch, unless the stream is dropped). A stream that is not local
    is the paper's attention over all its tokens (the fovea gated by :attr:`region` under
    ``foveal_gate``). The latent grid and the patch grid frame the same image; at a level finer
    than the patch grid a cell lies in one patch, at a coarser level it spans several.

    Written out rather than inherited: diffusers' IP-Adapter processor attends every query to
    every token of a stream and has no per-query key mask.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.local: tuple[bool, bool] = (True, False)  # (foveal, peripheral); set by the adapters
        self.gate_fovea = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_call(ip_adapter_masks, "bind a stream to its patches (foveal_local / peripheral_local)")
        text, streams = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, channels, height * width).transpose(1, 2)
        b, n_cells, _ = hidden_states.shape
        if self.region.shape[0] != b:
            raise ValueError(f"The foveal region has {self.region.shape[0]} rows for a batch of {b}.")
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        heads = attn.heads
        head_dim = query.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, heads * d) -> (B, heads, L, d)
            return x.view(b, -1, heads, head_dim).transpose(1, 2)

        q = split(query)
        grid = _layer_grid(self.latent_size, n_cells)
        out = F.scaled_dot_product_attention(
            q, split(attn.to_k(text)), split(attn.to_v(text)), attn_mask=attention_mask
        )
        for k, (tokens, stream_scale, local) in enumerate(zip(streams, self.scale, self.local)):
            if stream_scale == 0:
                continue
            to_k, to_v = self.to_k_ip[k], self.to_v_ip[k]
            if local:
                shown = self._shown(k, tokens)
                keys, values = _project_shown(to_k, tokens, shown), _project_shown(to_v, tokens, shown)
                term = self._local(q, keys, values, shown, grid)
            else:
                term = F.scaled_dot_product_attention(q, split(to_k(tokens)), split(to_v(tokens)))
                if k == 0 and self.gate_fovea:
                    mask = F.interpolate(self.region.to(term), size=grid, mode="nearest-exact")
                    term = term * mask.reshape(b, 1, n_cells, 1)
            out = out + stream_scale * term
        hidden_states = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _shown(self, stream: int, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, G * G)`` bool: the patches a local stream shows (fovea: the region; periphery: non-zero tokens)."""
        b = tokens.shape[0]
        n_patches = self.region.shape[-1] * self.region.shape[-2]
        if tokens.shape[1] % n_patches:
            name = ("foveal", "peripheral")[stream]
            raise ValueError(
                f"{name}_local expects {n_patches} patches x num_tokens tokens, got {tokens.shape[1]} tokens."
            )
        if stream == 0:
            return self.region.reshape(b, n_patches).to(tokens.device) > 0
        return tokens.reshape(b, n_patches, -1).ne(0).any(dim=-1)

    def _local(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, shown: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """``(B, heads, h * w, d)``: each cell's attention over the tokens of its own shown patches.

        ``keys`` / ``values`` are ``(B, T * n, heads * d)``, patch ``t``'s ``n`` tokens in a row;
        ``shown`` is ``(B, T)``.
        """
        b, heads, n_cells, d = q.shape
        n_patches = shown.shape[1]
        per_patch = keys.shape[1] // n_patches
        index, valid = _cell_patches(grid, math.isqrt(n_patches), q.device)  # (cells, c)
        allowed = shown[:, index] & valid  # (B, cells, c)

        def gather(x: torch.Tensor) -> torch.Tensor:  # (B, T * n, heads * d) -> (B, heads, cells, c * n, d)
            x = x.view(b, n_patches, per_patch, heads, d)[:, index]  # (B, cells, c, n, heads, d)
            return x.permute(0, 4, 1, 2, 3, 5).reshape(b, heads, n_cells, -1, d)

        logits = torch.einsum("bhqd,bhqkd->bhqk", q, gather(keys)) * d**-0.5
        key_ok = allowed.repeat_interleave(per_patch, dim=-1)[:, None]  # (B, 1, cells, c * n)
        weights = logits.masked_fill(~key_ok, float("-inf")).softmax(dim=-1)
        weights = torch.where(key_ok.any(dim=-1, keepdim=True), weights, torch.zeros_like(weights))  # no patch: 0
        return torch.einsum("bhqk,bhqkd->bhqd", weights, gather(values))


def _project_shown(proj: nn.Linear, tokens: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """``proj`` of a local stream's ``(B, T * n, C)`` tokens, computed for the shown patches only.

    The other patches' keys and values are masked out of every cell's attention, so they are left
    at zero: a fovea of 1-10 patches projects 10-160 tokens instead of ``T * n`` at every step.
    """
    b, t = shown.shape
    x = tokens.view(b, t, -1, tokens.shape[-1])
    out = x.new_zeros(*x.shape[:3], proj.out_features)
    out[shown] = proj(x[shown]).to(out.dtype)
    return out.reshape(b, -1, proj.out_features)


def _cell_patches(grid: tuple[int, int], g: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    index, valid = _cell_patches_cpu(tuple(grid), g)
    return index.to(device), valid.to(device)


@functools.lru_cache(maxsize=64)  # the same few (level, grid) pairs at every step of every call
def _cell_patches_cpu(grid: tuple[int, int], g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches of a ``g x g`` grid that each cell of an ``h x w`` grid overlaps (both frame one image).

    Returns ``index`` ``(h * w, c)`` of patch numbers (row-major) and ``valid`` ``(h * w, c)``, with
    ``c`` the most patches any cell overlaps (padding entries are invalid).
    """
    h, w = grid

    def spans(n: int) -> list[range]:  # patch rows/columns overlapped by each of n cells
        return [range(i * g // n, -(-(i + 1) * g // n)) for i in range(n)]

    rows, cols = spans(h), spans(w)
    cells = [[r * g + c for r in rr for c in cc] for rr in rows for cc in cols]
    width = max(len(p) for p in cells)
    index = torch.tensor([p + [0] * (width - len(p)) for p in cells])
    valid = torch.tensor([[True] * len(p) + [False] * (width - len(p)) for p in cells])
    return index, valid


def _layer_grid(latent_size: tuple[int, int], n: int) -> tuple[int, int]:
    """``(h, w)`` of the UNet level with ``n`` cells: the latent grid halved (rounding up) k times."""
    h, w = latent_size
    while h * w > n:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n:
        raise ValueError(f"No level of a {latent_size} latent has {n} cells.")
    return h, w


def _processor_classes(attention: str, *, gate: bool = False, local: bool = False) -> tuple[type, type]:
    """``(two-stream cross-attention processor, plain processor)`` of a backend."""
    if attention == "xformers":
        if gate or local:
            name = "foveal_local / peripheral_local" if local else "foveal_gate"
            raise ValueError(f"{name} is implemented for SDPA attention only; use attention='sdpa'.")
        return IPAdapterXFormersAttnProcessor, XFormersAttnProcessor
    if attention == "sdpa":
        if local:
            return LocalAttnProcessor, AttnProcessor2_0
        return (FovealGateAttnProcessor if gate else IPAdapterAttnProcessor2_0), AttnProcessor2_0
    raise ValueError(f"Unknown attention backend {attention!r}; choose 'sdpa' or 'xformers'.")


# saved folders record the public package, not this file (diffusers reads the class's module)
MetamerGenAdapters.__module__ = SERIALIZED_MODULE
