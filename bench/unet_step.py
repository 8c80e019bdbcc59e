"""Denoising-step overhead: one UNet call with classifier-free guidance (batch 2B).

Cases, all on the *same* UNet object (only the attention processors and ``encoder_hid_proj`` are
switched between calls, untimed), interleaved after warm-up:

* ``plain``: Stable Diffusion's UNet with its stock processors, text only;
* ``metamergen``: MetamerGen's dual adapters installed, ``encoder_hidden_states=(text, [fov, per])``
  with the resampled tokens computed once per generation (as the pipeline does), so the step pays
  only the two extra K/V projections and attentions per cross-attention layer;
* ``metamergen_resample_each_step``: the same plus both Perceiver resamplers run in every call (what
  the step would cost without hoisting them out of the loop; shown to size that optimisation);
* ``ip_adapter_plus``: diffusers' stock single IP-Adapter-Plus: ``IPAdapterAttnProcessor2_0`` with
  one stream and ``MultiIPAdapterImageProjection([IPAdapterPlusImageProjection])`` as the UNet's
  ``encoder_hid_proj``, fed ``added_cond_kwargs={"image_embeds": [...]}`` so the resampler runs inside
  every UNet call, as in diffusers' pipelines (SD1.5 ip-adapter-plus shape: 257 CLIP-H tokens of
  1280 -> 16 tokens).

Target: MetamerGen dual adapters <= 1.10x the plain step at 512 px.

    python bench/unet_step.py [--tiny] [--device cuda] [--dtype float16] [--batch-sizes 1 8]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402

NAME = "unet_step"
CASES = ("plain", "metamergen", "metamergen_resample_each_step", "ip_adapter_plus")
TARGET = 1.10


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=10, warmup=2)
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], help="B; the UNet sees 2B with CFG (default 1 8)"
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="image side in pixels (default: the UNet's native, 512 for SD1.5)"
    )
    p.add_argument("--timestep", type=int, default=500)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

    from metamergen.adapters.model import cross_attention_layers

    bl.log(f"[{NAME}] building {'tiny' if args.tiny else 'SD1.5-size'} UNet and adapters on {device} ({args.dtype})")
    comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
    unet, adapters = comp.unet, comp.adapters
    resolution = args.resolution or comp.resolution
    latent = resolution // comp.vae_scale_factor
    cross = int(unet.config.cross_attention_dim)
    enc_dim, enc_tokens = int(comp.image_encoder.config.hidden_size), comp.grid_tokens

    # ---- the three processor sets and the stock IP-Adapter-Plus projection
    plain_procs = {name: AttnProcessor2_0() for name in unet.attn_processors}
    adapters.install(unet)
    dual_procs = dict(unet.attn_processors)
    if args.tiny:  # mirror tiny_adapters' resampler (1 head of 64, 4 queries) on tiny encoder tokens
        ipa = dict(image_tokens=enc_tokens + 1, embed_dims=enc_dim, hidden_dims=64, heads=1, num_queries=4)
    else:
        ipa = dict(bl.IP_ADAPTER_PLUS_SD15)
    ipa_procs: dict[str, Any] = {name: AttnProcessor2_0() for name in unet.attn_processors}
    with torch.no_grad():
        for name, hidden, cad in cross_attention_layers(unet):
            proc = IPAdapterAttnProcessor2_0(
                hidden_size=hidden, cross_attention_dim=cad, num_tokens=(ipa["num_queries"],), scale=1.0
            )
            attn = unet.get_submodule(name[: -len(".processor")])
            proc.to_k_ip[0].weight.copy_(attn.to_k.weight)
            proc.to_v_ip[0].weight.copy_(attn.to_v.weight)
            ipa_procs[name] = proc.to(device=device, dtype=dtype)
    ip_proj = (
        MultiIPAdapterImageProjection(
            [
                IPAdapterPlusImageProjection(
                    embed_dims=ipa["embed_dims"],
                    output_dims=cross,
                    hidden_dims=ipa["hidden_dims"],
                    depth=4,
                    dim_head=64,
                    heads=ipa["heads"],
                    num_queries=ipa["num_queries"],
                )
            ]
        )
        .to(device=device, dtype=dtype)
        .eval()
    )

    def use(procs: dict[str, Any], proj: Any) -> None:
        unet.encoder_hid_proj = (
            None  # its Perceiver has attention layers too: detach it first, as diffusers' loader does
        )
        unet.set_attn_processor(dict(procs))  # set_attn_processor pops from the dict it is given
        unet.encoder_hid_proj = proj
        unet.config.encoder_hid_dim_type = "ip_image_proj" if proj is not None else None  # as diffusers' loader does

    before = {
        "plain": lambda: use(plain_procs, None),
        "metamergen": lambda: use(dual_procs, None),
        "metamergen_resample_each_step": lambda: use(dual_procs, None),
        "ip_adapter_plus": lambda: use(ipa_procs, ip_proj),
    }

    raw, med, ratios, targets, rows = {}, {}, {}, {}, []
    for b in args.batch_sizes:
        n = 2 * b  # classifier-free guidance: unconditional + conditional rows
        g = torch.Generator(device="cpu").manual_seed(args.seed + b)

        def rnd(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        latents = rnd(n, int(unet.config.in_channels), latent, latent)
        t = torch.tensor(args.timestep, device=device)
        text = rnd(n, 77, cross)
        fov_tokens, per_tokens = rnd(n, enc_tokens, enc_dim), rnd(n, enc_tokens, enc_dim)
        with torch.inference_mode():
            streams = adapters.project(fov_tokens, per_tokens)  # once per generation in the pipeline
        image_embeds = [rnd(n, 1, ipa["image_tokens"], ipa["embed_dims"])]

        cases = {
            "plain": lambda: unet(latents, t, encoder_hidden_states=text).sample,
            "metamergen": lambda: unet(latents, t, encoder_hidden_states=(text, streams)).sample,
            "metamergen_resample_each_step": lambda: (
                unet(latents, t, encoder_hidden_states=(text, adapters.project(fov_tokens, per_tokens))).sample
            ),
            "ip_adapter_plus": lambda: (
                unet(latents, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": image_embeds}).sample
            ),
        }
        bl.log(f"[{NAME}] B={b} (UNet batch {n}), {resolution} px, {args.warmup} warm-up + {args.repeats} repeats")
        with torch.inference_mode():
            times = bl.interleaved(
                cases, repeats=args.repeats, warmup=args.warmup, device=device, before=before, log=bl.log
            )
        key = f"B={b}"
        raw[key] = times
        med[key] = {c: bl.median(times[c]) for c in CASES}
        ratios[key] = {c: med[key][c] / med[key]["plain"] for c in CASES}
        r = ratios[key]["metamergen"]
        if args.tiny or resolution != 512:
            verdict = "n/a (target is for SD1.5 at 512 px)"
        else:
            verdict = "PASS" if r <= TARGET else "MISS"
        targets[key] = {"metric": "metamergen / plain", "target": f"<= {TARGET}", "value": r, "verdict": verdict}
        m = med[key]
        rows.append(
            [
                b,
                bl.fmt_ms(m["plain"]),
                f"{bl.fmt_ms(m['metamergen'])} ({bl.fmt_x(r)})",
                f"{bl.fmt_ms(m['metamergen_resample_each_step'])} ({bl.fmt_x(ratios[key]['metamergen_resample_each_step'])})",
                f"{bl.fmt_ms(m['ip_adapter_plus'])} ({bl.fmt_x(ratios[key]['ip_adapter_plus'])})",
                verdict,
            ]
        )
    use(dual_procs, None)

    table = bl.make_table(
        f"Denoising step with classifier-free guidance, {resolution} px ({'tiny' if args.tiny else 'SD1.5'}, {args.dtype}, {device.type})",
        [
            "B (UNet batch 2B)",
            "plain SD ms",
            "MetamerGen dual ms (x plain)",
            "dual + resamplers every step ms",
            "IP-Adapter-Plus ms",
            f"dual <= {TARGET}x",
        ],
        rows,
        notes=[
            f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up round(s); one UNet call each",
            "MetamerGen runs its resamplers once per generation, so the step pays only the extra K/V attention",
            "IP-Adapter-Plus is diffusers' stock path: its resampler runs inside every UNet call",
        ],
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(
            args,
            resolution=resolution,
            latent_size=latent,
            cfg_batch="2B",
            ip_adapter_plus_shape=ipa,
            models=comp.describe(),
            encoder_config_check=bl.dinov2_config_check(),
        ),
        raw_seconds=raw,
        median_seconds=med,
        ratios=ratios,
        targets=targets,
        table=table,
    )


if __name__ == "__main__":
    main()
