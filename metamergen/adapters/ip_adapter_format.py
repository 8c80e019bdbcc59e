"""Export :class:`~metamergen.adapters.MetamerGenAdapters` to diffusers' IP-Adapter weight files.

Each stream (foveal, peripheral) becomes one IP-Adapter-Plus file that a stock diffusers pipeline
loads as one of two IP-Adapters::

    from metamergen.adapters.ip_adapter_format import FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME, save_ip_adapter

    save_ip_adapter(pipe.adapters, "export/")
    sd = diffusers.StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    sd.load_ip_adapter(["export/", "export/"], subfolder="",
                       weight_name=[FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME], image_encoder_folder=None)
    sd(prompt, ip_adapter_image_embeds=[foveal_tokens, peripheral_tokens], ...)

where each entry of ``ip_adapter_image_embeds`` holds DINOv2 tokens shaped ``[batch, 1, T, D]``;
with classifier-free guidance diffusers expects ``torch.cat([negative, positive])`` and
MetamerGen's negative (unconditional) tokens are **zeros** (what training uses to drop a stream).
The stock pipeline repeats embeddings across its batch (diffusers issue #9813) and never casts
them to the UNet's dtype: pass them in the UNet's dtype.

File layout (the original IP-Adapter layout, i.e. the inverse of diffusers'
``UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers`` "IP-Adapter Plus"
branch and ``_convert_ip_adapter_attn_to_diffusers``):

* ``image_proj.<name>``: the Perceiver resampler under the original ``Resampler`` names
  (``latents``, ``proj_in``, ``proj_out``, ``norm_out``, ``layers.{i}.0.norm1/norm2/to_q/to_kv/
  to_out``, ``layers.{i}.1.0/1.1/1.3``; ``to_kv`` is K and V stacked along the output rows);
* ``ip_adapter.{k}.to_k_ip.weight`` / ``ip_adapter.{k}.to_v_ip.weight`` with ``k = 1, 3, 5, ...``:
  one pair per cross-attention layer in ``unet.attn_processors`` order (diffusers counts every
  cross-attention layer as ``key_id`` and steps it by 2).

diffusers rebuilds the resampler with its defaults (depth 4, dim_head 64, ffn ratio 4) and infers
``heads = to_q rows // 64``, so only adapters with that Perceiver shape can be exported.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from metamergen.adapters.model import STREAMS, MetamerGenAdapters
from metamergen.utils.io import atomic_write

__all__ = [
    "FOVEAL_WEIGHT_NAME",
    "PERIPHERAL_WEIGHT_NAME",
    "load_ip_adapter_state_dicts",
    "save_ip_adapter",
    "to_ip_adapter_state_dicts",
]

#: File name of the foveal stream's IP-Adapter weights.
FOVEAL_WEIGHT_NAME = "ip-adapter-metamergen-foveal.safetensors"
#: File name of the peripheral stream's IP-Adapter weights.
PERIPHERAL_WEIGHT_NAME = "ip-adapter-metamergen-peripheral.safetensors"

_WEIGHT_NAMES = {"foveal": FOVEAL_WEIGHT_NAME, "peripheral": PERIPHERAL_WEIGHT_NAME}

# Perceiver shape diffusers' converter assumes (it reads neither depth, dim_head nor ffn ratio).
_REQUIRED_DEPTH = 4
_REQUIRED_DIM_HEAD = 64
_REQUIRED_FFN_RATIO = 4

# diffusers IPAdapterPlusImageProjection name -> original Resampler name, per block (``{i}`` = block).
# ``attn.to_k`` and ``attn.to_v`` are handled separately: they merge into ``0.to_kv``.
_BLOCK_RENAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_out.0": "0.to_out",
    "ff.0": "1.0",
    "ff.1.net.0.proj": "1.1",
    "ff.1.net.2": "1.3",
}
_TOP_LEVEL_PREFIXES = ("proj_in.", "proj_out.", "norm_out.")
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


# ---------------------------------------------------------------------- checks


def _check_exportable(adapters: MetamerGenAdapters) -> None:
    """Raise ``ValueError`` unless diffusers' IP-Adapter converter can rebuild these resamplers."""
    cfg = adapters.config
    problems = []
    if int(cfg.resampler_depth) != _REQUIRED_DEPTH:
        problems.append(f"resampler_depth={cfg.resampler_depth} (must be {_REQUIRED_DEPTH})")
    if int(cfg.resampler_dim_head) != _REQUIRED_DIM_HEAD:
        problems.append(f"resampler_dim_head={cfg.resampler_dim_head} (must be {_REQUIRED_DIM_HEAD})")
    if float(cfg.resampler_ffn_ratio) != _REQUIRED_FFN_RATIO:
        problems.append(f"resampler_ffn_ratio={cfg.resampler_ffn_ratio} (must be {_REQUIRED_FFN_RATIO})")
    # No constraint on hidden width vs heads: the converter reads the width from ``latents`` and
    # heads from ``to_q`` rows // 64, which is exact whenever dim_head is 64 (tested).
    if problems:
        raise ValueError(
            "These adapters cannot be exported to the IP-Adapter format: diffusers' loader rebuilds the "
            f"Perceiver resampler with depth {_REQUIRED_DEPTH}, dim_head {_REQUIRED_DIM_HEAD} and ffn ratio "
            f"{_REQUIRED_FFN_RATIO} and infers heads = to_q rows // {_REQUIRED_DIM_HEAD}, so the files would "
            f"not load (or would load a different network). Offending settings: {'; '.join(problems)}. "
            f"Train adapters with resampler_depth={_REQUIRED_DEPTH}, resampler_dim_head={_REQUIRED_DIM_HEAD}, "
            f"resampler_ffn_ratio={_REQUIRED_FFN_RATIO} (the defaults), or keep using these adapters through "
            "MetamerGenPipeline (adapters.save_pretrained / from_pretrained) instead."
        )


def _streams(
    adapters: MetamerGenAdapters,
) -> dict[str, tuple[torch.nn.Module, torch.nn.ModuleList, torch.nn.ModuleList]]:
    return {
        "foveal": (adapters.foveal_resampler, adapters.to_k_foveal, adapters.to_v_foveal),
        "peripheral": (adapters.peripheral_resampler, adapters.to_k_peripheral, adapters.to_v_peripheral),
    }


def _ip_key(layer: int, kind: str) -> str:
    """``ip_adapter`` key of cross-attention layer ``layer`` (0-based): diffusers' key_id = 2 * layer + 1."""
    return f"{2 * layer + 1}.{kind}_ip.weight"


# ---------------------------------------------------------------------- renaming


def _resampler_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``IPAdapterPlusImageProjection`` state dict -> original ``Resampler`` names."""
    out: dict[str, torch.Tensor] = {}
    kv: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name == "latents" or name.startswith(_TOP_LEVEL_PREFIXES):
            out[name] = tensor
            continue
        m = _BLOCK_KEY.match(name)
        if m is None:
            raise ValueError(
                f"Unexpected resampler parameter {name!r}; this diffusers version is not supported for export."
            )
        block, inner, leaf = int(m.group(1)), m.group(2), m.group(3)
        if inner in ("attn.to_k", "attn.to_v") and leaf == "weight":
            kv.setdefault(block, {})[inner[-1]] = tensor
        elif inner in _BLOCK_RENAMES:
            out[f"layers.{block}.{_BLOCK_RENAMES[inner]}.{leaf}"] = tensor
        else:
            raise ValueError(
                f"Unexpected resampler parameter {name!r}; this diffusers version is not supported for export."
            )
    for block, pair in kv.items():
        if set(pair) != {"k", "v"}:
            raise ValueError(f"Resampler block {block} lacks attn.to_k or attn.to_v; cannot build to_kv.")
        out[f"layers.{block}.0.to_kv.weight"] = torch.cat([pair["k"], pair["v"]], dim=0)
    return out


def _original_to_resampler(state: Mapping[str, torch.Tensor], stream: str) -> dict[str, torch.Tensor]:
    """Original ``Resampler`` names -> diffusers ``IPAdapterPlusImageProjection`` names (to_kv split)."""
    inverse = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "latents" or name.startswith(_TOP_LEVEL_PREFIXES):
            out[name] = tensor
            continue
        m = _BLOCK_KEY.match(name)
        if m is None:
            raise ValueError(f"{stream}: unexpected image_proj key {name!r}; expected IP-Adapter-Plus Resampler names.")
        block, inner, leaf = int(m.group(1)), m.group(2), m.group(3)
        if inner == "0.to_kv" and leaf == "weight":
            if tensor.shape[0] % 2:
                raise ValueError(
                    f"{stream}: image_proj.{name} has an odd number of rows {tuple(tensor.shape)}; it must stack K and V."
                )
            k, v = tensor.chunk(2, dim=0)
            out[f"layers.{block}.attn.to_k.weight"] = k
            out[f"layers.{block}.attn.to_v.weight"] = v
        elif inner in inverse:
            out[f"layers.{block}.{inverse[inner]}.{leaf}"] = tensor
        else:
            raise ValueError(f"{stream}: unexpected image_proj key {name!r}; expected IP-Adapter-Plus Resampler names.")
    return out


def _nested(state: Mapping, stream: str) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """Accept ``{"image_proj": {...}, "ip_adapter": {...}}`` or the flat file form ``{"image_proj.x": ...}``."""
    if "image_proj" in state and "ip_adapter" in state:
        return state["image_proj"], state["ip_adapter"]
    image_proj = {k[len("image_proj.") :]: v for k, v in state.items() if k.startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter.") :]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not image_proj or not ip_adapter or len(image_proj) + len(ip_adapter) != len(state):
        raise ValueError(
            f"{stream}: expected an IP-Adapter state dict {{'image_proj': {{...}}, 'ip_adapter': {{...}}}} "
            "(as produced by to_ip_adapter_state_dicts) or the flat file form with 'image_proj.' / "
            f"'ip_adapter.' prefixes; got keys {sorted(state)[:6]}..."
        )
    return image_proj, ip_adapter


# ---------------------------------------------------------------------- public API


def to_ip_adapter_state_dicts(adapters: MetamerGenAdapters) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """The two streams as IP-Adapter-Plus state dicts, in the nested form diffusers' loader uses.

    Parameters
    ----------
    adapters
        Trained adapters with the Perceiver shape diffusers can rebuild (depth 4, dim_head 64,
        ffn ratio 4: the defaults; any width and number of heads).

    Returns
    -------
    dict
        ``{"foveal": {"image_proj": {...}, "ip_adapter": {...}}, "peripheral": {...}}``; tensors are
        detached CPU copies in the adapters' dtype. ``image_proj`` uses the original IP-Adapter
        ``Resampler`` names; ``ip_adapter`` has ``{k}.to_k_ip.weight`` / ``{k}.to_v_ip.weight`` for
        ``k = 1, 3, 5, ...`` over the cross-attention layers in ``unet.attn_processors`` order.
        Pass ``[out["foveal"], out["peripheral"]]`` to ``pipe.load_ip_adapter`` directly, or write
        files with :func:`save_ip_adapter`.

    Raises
    ------
    ValueError
        If the resampler shape is not one diffusers' converter can rebuild.
    """
    _check_exportable(adapters)
    result: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for stream, (resampler, to_k, to_v) in _streams(adapters).items():
        state = {n: t.detach().cpu().clone().contiguous() for n, t in resampler.state_dict().items()}
        image_proj = _resampler_to_original(state)
        ip_adapter: dict[str, torch.Tensor] = {}
        for i, (k, v) in enumerate(zip(to_k, to_v)):
            ip_adapter[_ip_key(i, "to_k")] = k.weight.detach().cpu().clone().contiguous()
            ip_adapter[_ip_key(i, "to_v")] = v.weight.detach().cpu().clone().contiguous()
        result[stream] = {"image_proj": image_proj, "ip_adapter": ip_adapter}
    return result


#: Adapter options a stock IP-Adapter pipeline cannot reproduce (an export warns for each that is on).
_NOT_IN_STOCK_IP_ADAPTER = {
    "mask_empty_tokens": "leave the fovea's zero tokens out of the resampler's attention, which diffusers' projection cannot",
    "foveal_gate": "confine the foveal stream to the fixated patches, where a stock pipeline adds it everywhere",
    "foveal_local": "resample each fixated patch alone and bind it to its place",
    "peripheral_local": "resample each patch of the periphery alone and bind it to its place",
}


def save_ip_adapter(adapters: MetamerGenAdapters, directory: str | os.PathLike) -> list[Path]:
    """Write the two streams as IP-Adapter safetensors files into ``directory``.

    Each file is written to a temporary name in ``directory``, flushed to disk, then renamed over
    its final name (``os.replace``), so a reader never sees a half-written file. Existing files of
    the same names are replaced; nothing else in ``directory`` is touched.

    Parameters
    ----------
    adapters
        Adapters to export (see :func:`to_ip_adapter_state_dicts` for the shape constraints).
    directory
        Target folder; created if missing.

    Returns
    -------
    list of pathlib.Path
        ``[directory / FOVEAL_WEIGHT_NAME, directory / PERIPHERAL_WEIGHT_NAME]``, in the order to
        pass to ``load_ip_adapter(..., weight_name=[...])``.

    Raises
    ------
    ValueError
        If the resampler shape cannot be exported (before anything is written).
    """
    state_dicts = to_ip_adapter_state_dicts(adapters)
    for option, what in _NOT_IN_STOCK_IP_ADAPTER.items():
        if adapters.config.get(option, False):
            warnings.warn(
                f"These adapters {what} ({option}); a stock IP-Adapter pipeline running this export will not "
                "reproduce MetamerGen's renders. Render with MetamerGenPipeline for the model's own output.",
                stacklevel=2,
            )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for stream in STREAMS:
        flat = {
            f"{group}.{name}": t
            for group in ("image_proj", "ip_adapter")
            for name, t in state_dicts[stream][group].items()
        }
        # One metadata entry only: safetensors writes metadata in hash-map order, so several entries
        # would make the bytes differ from run to run.
        blobs[stream] = safetensors_save(flat, metadata={"format": "pt"})
    paths = []
    for stream in STREAMS:
        blob = blobs[stream]
        paths.append(atomic_write(directory / _WEIGHT_NAMES[stream], lambda p, blob=blob: Path(p).write_bytes(blob)))
    return paths


def load_ip_adapter_state_dicts(adapters: MetamerGenAdapters, foveal: Mapping, peripheral: Mapping) -> None:
    """Fill ``adapters`` in place from two IP-Adapter-Plus state dicts (inverse of the export).

    Parameters
    ----------
    adapters
        Existing adapters of the matching shape (e.g. ``MetamerGenAdapters.from_unet(unet, ...)``
        with the same config as the exported ones). Their dtype and device are kept.
    foveal, peripheral
        ``{"image_proj": {...}, "ip_adapter": {...}}`` as returned by
        :func:`to_ip_adapter_state_dicts` (the flat ``"image_proj.x"`` / ``"ip_adapter.k..."`` form of
        the files, e.g. ``safetensors.torch.load_file(path)``, is accepted too).

    Raises
    ------
    ValueError
        If a key is missing or unexpected, or a tensor's shape differs from the adapters'; nothing
        is modified in that case.
    """
    _check_exportable(adapters)
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    for stream, state in (("foveal", foveal), ("peripheral", peripheral)):
        resampler, to_k, to_v = _streams(adapters)[stream]
        image_proj, ip_adapter = _nested(state, stream)
        incoming = _original_to_resampler(image_proj, stream)
        targets = dict(resampler.state_dict(keep_vars=True))
        for i, (k, v) in enumerate(zip(to_k, to_v)):
            targets[f"ip_adapter.{_ip_key(i, 'to_k')}"] = k.weight
            targets[f"ip_adapter.{_ip_key(i, 'to_v')}"] = v.weight
        incoming.update({f"ip_adapter.{n}": t for n, t in ip_adapter.items()})
        missing = sorted(set(targets) - set(incoming))
        unexpected = sorted(set(incoming) - set(targets))
        if missing or unexpected:
            raise ValueError(
                f"{stream}: the IP-Adapter state dict does not match these adapters "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}). Build the adapters for the same "
                f"UNet ({len(to_k)} cross-attention layers here) with the same resampler config as the export."
            )
        for name, target in targets.items():
            source = incoming[name]
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(
                    f"{stream}: {name} has shape {tuple(source.shape)} but these adapters expect "
                    f"{tuple(target.shape)}. Build the adapters with the exported config (num_tokens, "
                    "image_embed_dim, resampler_hidden_dim/heads, cross_attention_dim) for the same UNet."
                )
            plan.append((target, source))
    with torch.no_grad():
        for target, source in plan:
            target.copy_(source.to(device=target.device, dtype=target.dtype))
