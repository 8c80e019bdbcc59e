"""Regenerate the bundled demo model from scratch on the CPU.

    python training/build_demo_model.py                       # full build -> metamergen/assets/demo_model
    python training/build_demo_model.py --quick --out /tmp/m  # a few steps of each stage (CI)

Stages (all seeded; the seeds and step counts are written to ``build_info.json`` next to the model):

1. **world**: toy train/test splits (:func:`metamergen.demo.toyworld.write_world`);
2. **vae**: a small VAE trained to reconstruct the train scenes (:func:`metamergen.demo.toymodel.train_vae`);
3. **base**: a small UNet and its text encoder trained text-to-image on scene captions
   (:func:`metamergen.demo.toymodel.train_base_unet`), the toy counterpart of Stable Diffusion;
4. **encoder**: the toy DINOv2, trained self-supervised on the train scenes so that each patch
   token says what its patch shows and where it is (:func:`metamergen.demo.toymodel.train_image_encoder`),
   then frozen, as DINOv2 is;
5. **adapters**: the project's own trainer (``training/train.py``'s loop) on the frozen base with
   ``configs/demo_toyworld.yaml``: the toy viewers' scanpaths and the two strongest blur levels
   (the config lists its departures from the paper and why).

The exported model is an ordinary :class:`~metamergen.MetamerGenPipeline` folder. Each stage's
output lands in ``--work`` and is reused by a later run with ``--resume-stages`` (for instance
to retrain only the adapters). ``--base-from <demo model>`` takes the VAE, text encoder and UNet
of an existing demo model instead of stages 2-3 (they are frozen during stage 5, so this retrains
exactly what the paper trains); the image encoder and the adapters are built fresh from the seed
and the model config (``--model-option key=value`` changes a :class:`DemoModelConfig` field).

    python training/build_demo_model.py --base-from metamergen/assets/demo_model --model-option encoder_position_scale=20
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metamergen.demo.toymodel import (
    DemoModelConfig,
    assemble_pipeline,
    build_image_encoder,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    encode_latents,
    images_to_tensor,
    scene_caption,
    train_base_unet,
    train_image_encoder,
    train_vae,
)
from metamergen.demo.toyworld import ToyWorldConfig, read_objects, write_world  # noqa: E402
from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline  # noqa: E402
from metamergen.training.config import TrainConfig  # noqa: E402
from metamergen.training.trainer import train  # noqa: E402
from metamergen.utils.io import atomic_write  # noqa: E402

DEFAULT_OUT = REPO / "metamergen" / "assets" / "demo_model"

#: What the base stage was built with (model config, and the model it came from), kept in its work
#: folder so that ``--resume-stages base`` records the reused base's config, not the defaults.
BASE_RECORD = "demo_base.json"

#: The DemoModelConfig fields that belong to the base (VAE, UNet, text encoder): a reused base keeps
#: its own, and an option changing one needs the base rebuilt.
BASE_FIELDS = frozenset(
    {
        "image_size",
        "vae_channels",
        "latent_channels",
        "unet_channels",
        "unet_layers_per_block",
        "cross_attention_dim",
        "text_layers",
        "text_max_length",
    }
)

#: Components saved in fp16. The text and image encoders stay fp32: transformers would load them
#: back in fp16, and together they are under 2 MB.
FP16_COMPONENTS = ("vae", "unet", "adapters")

#: Step counts of the full build and of ``--quick`` (CI smoke test).
FULL = {
    "n_train": 2000,
    "n_test": 200,
    "vae_steps": 1500,
    "base_steps": 2500,
    "encoder_steps": 1500,
    "adapter_steps": 1500,
}
QUICK = {"n_train": 16, "n_test": 4, "vae_steps": 2, "base_steps": 2, "encoder_steps": 2, "adapter_steps": 2}


def _load_train_split(world: Path) -> tuple[list, list[str], list]:
    """Train images, their captions and their object boxes."""
    from PIL import Image

    records = read_objects(world / "train" / "objects.jsonl")
    images, captions, boxes = [], [], []
    for rec in records.values():
        images.append(Image.open(world / "train" / "images" / rec["image"]).convert("RGB"))
        captions.append(scene_caption(rec["layout"], rec["objects"]))
        boxes.append([o.box for o in rec["objects"]])
    return images, captions, boxes


def _reused(model: str | Path, stage: str, seed: int) -> dict:
    """Provenance of a stage reused from another demo model; refuses one built from another seed."""
    other = json.loads((Path(model) / "build_info.json").read_text())
    if int(other["seed"]) != seed:
        raise ValueError(f"{model} was built with seed {other['seed']}; pass --seed {other['seed']}.")
    return {
        "git_commit": other.get("git_commit"),
        "steps": other.get("steps"),
        "results": other.get("results", {}).get(stage),
        "world": other.get("world"),
    }


def _only(mapping: dict, *keys: str) -> dict:
    return {k: mapping[k] for k in keys if k in mapping}


def build(
    out: str | Path = DEFAULT_OUT,
    *,
    work: str | Path = "outputs/demo_build",
    seed: int = 0,
    quick: bool = False,
    steps: dict[str, int] | None = None,
    resume_stages: Sequence[str] = (),
    overrides: Sequence[str] = (),
    base_from: str | Path | None = None,
    vae_from: str | Path | None = None,
    model_options: dict | None = None,
) -> Path:
    """Run every stage (module docstring) and write the model to ``out``; returns ``out``.

    ``steps`` overrides entries of :data:`FULL` (or :data:`QUICK` with ``quick``); ``overrides``
    are ``section.key=value`` overrides of the adapter-training config; ``base_from`` a demo model
    whose frozen VAE, text encoder and UNet replace stages 2-3; ``vae_from`` a demo model whose VAE
    replaces stage 2 (its world config and seed must match); ``model_options`` overrides fields
    of :class:`DemoModelConfig` (with ``base_from``, only those of the parts built fresh).
    """
    steps = {**(QUICK if quick else FULL), **(steps or {})}
    resume = set(resume_stages)
    for stage, needs in (("vae", "world"), ("base", "vae"), ("encoder", "world")):
        if stage in resume and needs not in resume:
            raise ValueError(
                f"--resume-stages {stage} needs {needs} too: a stage is only reused with the ones it was built on."
            )
    out = Path(out)
    if out.exists() and not (out / "model_index.json").is_file():
        raise FileExistsError(f"{out} exists and is not a model folder; refusing to replace it. Choose another --out.")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    model_cfg = DemoModelConfig()
    base_info = None
    base_record = work / "base" / BASE_RECORD
    resumed = None
    if "base" in resume and base_from is None and (work / "base" / "model_index.json").exists():
        if not base_record.is_file():
            raise ValueError(
                f"{work / 'base'} was built before the build recorded its config ({BASE_RECORD}), so the "
                "config it was built with is unknown; drop 'base' from --resume-stages to rebuild it."
            )
        resumed = json.loads(base_record.read_text())  # the reused base keeps its own fields and origin
        model_cfg = DemoModelConfig.from_dict({**model_cfg.to_dict(), **resumed["model"]})
    if base_from is not None:
        base_info = json.loads((Path(base_from) / "build_info.json").read_text())
        model_cfg = DemoModelConfig.from_dict(base_info["model"])
        if int(base_info["seed"]) != seed:
            raise ValueError(
                f"--base-from {base_from} was built with seed {base_info['seed']}; pass --seed {base_info['seed']}."
            )
    if base_from is not None and vae_from is not None:
        raise ValueError("--base-from already brings a VAE; drop --vae-from.")
    if model_options:
        unknown = set(model_options) - set(model_cfg.to_dict())
        if unknown:
            raise ValueError(f"Unknown model option(s) {sorted(unknown)}; valid: {sorted(model_cfg.to_dict())}.")
        if (base_from is not None or resumed is not None) and set(model_options) & BASE_FIELDS:
            raise ValueError(
                f"{sorted(set(model_options) & BASE_FIELDS)} belong to the reused base; "
                "drop --base-from (or 'base' from --resume-stages) to change them."
            )
        model_cfg = DemoModelConfig.from_dict({**model_cfg.to_dict(), **model_options})
    world_cfg = ToyWorldConfig(size=model_cfg.image_size, seed=seed)
    info: dict = {
        "steps": steps,
        "seed": seed,
        "model": model_cfg.to_dict(),
        "world": world_cfg.to_dict(),
        "timings_s": {},
        "results": {},
    }
    torch.manual_seed(seed)

    t0 = time.time()
    world = work / "world"
    if "world" not in resume or not (world / "test" / "objects.jsonl").exists():
        shutil.rmtree(world, ignore_errors=True)
        write_world(world, steps["n_train"], steps["n_test"], seed=seed, config=world_cfg)
    info["timings_s"]["world"] = round(time.time() - t0, 1)
    images, captions, boxes = _load_train_split(world)
    pixels = images_to_tensor(images)

    t0 = time.time()
    vae_dir = work / "vae"
    if base_from is not None:
        vae = None  # the reused base's VAE goes in with the base below
    elif vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", torch_dtype=torch.float32)
        info["vae_from"] = {"path": str(vae_from), **_reused(vae_from, "vae", seed)}
        if info["vae_from"]["world"] != world_cfg.to_dict():
            raise ValueError(f"--vae-from {vae_from} was trained on another toy world; drop --vae-from.")
        if tuple(vae.config.block_out_channels) != tuple(model_cfg.vae_channels) or int(
            vae.config.latent_channels
        ) != int(model_cfg.latent_channels):
            raise ValueError(f"--vae-from {vae_from} has another VAE shape than the model config; drop --vae-from.")
    elif "vae" in resume and vae_dir.exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        torch.manual_seed(seed)
        vae = build_vae(model_cfg)
        info["results"]["vae"] = train_vae(vae, pixels, steps=steps["vae_steps"], boxes=boxes, seed=seed, progress=True)
        vae.save_pretrained(vae_dir)
    info["timings_s"]["vae"] = round(time.time() - t0, 1)

    t0 = time.time()
    base_dir = work / "base"
    if base_from is not None:
        src = MetamerGenPipeline.from_pretrained(base_from)
        torch.manual_seed(seed + 2)  # the same seed stage 3 builds the encoder and adapters with
        base = assemble_pipeline(
            vae=src.vae,
            text_encoder=src.text_encoder,
            tokenizer=src.tokenizer,
            unet=src.unet,
            image_encoder=build_image_encoder(model_cfg),
            config=model_cfg,
        )
        base.save_pretrained(base_dir)
        info["base_from"] = {
            "path": str(base_from),
            "git_commit": base_info.get("git_commit"),
            "steps": base_info.get("steps"),
            "results": {k: v for k, v in base_info.get("results", {}).items() if k in ("vae", "base")},
        }
    elif not ("base" in resume and (base_dir / "model_index.json").exists()):
        torch.manual_seed(seed + 1)
        tokenizer = build_tokenizer(model_cfg.text_max_length)
        text_encoder = build_text_encoder(tokenizer, model_cfg)
        unet = build_unet(model_cfg)
        latents = encode_latents(vae, pixels)
        info["results"]["base"] = train_base_unet(
            unet, text_encoder, tokenizer, latents, captions, steps=steps["base_steps"], seed=seed + 1, progress=True
        )
        torch.manual_seed(seed + 2)
        base = assemble_pipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            image_encoder=build_image_encoder(model_cfg),
            config=model_cfg,
        )
        base.save_pretrained(base_dir)
    if resumed is not None and "base_from" in resumed:
        info["base_from"] = resumed["base_from"]
    record = {"model": {k: v for k, v in model_cfg.to_dict().items() if k in BASE_FIELDS}, **_only(info, "base_from")}
    atomic_write(base_record, lambda t: Path(t).write_text(json.dumps(record, indent=2) + "\n"))
    info["timings_s"]["base"] = round(time.time() - t0, 1)

    t0 = time.time()
    encoder_dir = work / "image_encoder"
    if "encoder" in resume and (encoder_dir / "config.json").exists():
        encoder = type(build_image_encoder(model_cfg)).from_pretrained(encoder_dir)
    else:
        torch.manual_seed(seed + 2)  # the encoder's initial weights: the ones assemble_pipeline drew
        encoder = build_image_encoder(model_cfg)
        info["results"]["encoder"] = train_image_encoder(
            encoder, images, steps=steps["encoder_steps"], seed=seed + 3, progress=True
        )
        encoder.save_pretrained(encoder_dir)
    base = MetamerGenPipeline.from_pretrained(base_dir)
    base.register_modules(image_encoder=encoder)
    base.save_pretrained(base_dir)
    info["timings_s"]["encoder"] = round(time.time() - t0, 1)

    t0 = time.time()
    if not {"vae", "base", "encoder"} <= resume or base_from is not None:
        # the cache holds the VAE's latents and the encoder's tokens, and the checkpoints adapters
        # trained on them: both are stale once a stage before this one was rebuilt
        shutil.rmtree(work / "feature_cache", ignore_errors=True)
        shutil.rmtree(work / "adapters_run", ignore_errors=True)
    cfg = TrainConfig.from_yaml(
        REPO / "configs" / "demo_toyworld.yaml",
        [
            f"model.pipeline={base_dir}",
            f"data.scanpaths={world / 'train' / 'scanpaths.jsonl'}",
            f"data.feature_cache={work / 'feature_cache'}",
            f"run.output_dir={work / 'adapters_run'}",
            f"run.seed={seed}",
            f"optim.max_steps={steps['adapter_steps']}",
            *(["optim.lr_warmup_steps=0", "optim.batch_size=4"] if quick else []),
            *overrides,
        ],
    )
    run = train(cfg, overwrite=True)  # the stages above decide what is reused; the run folder is rebuilt
    info["timings_s"]["adapters"] = round(time.time() - t0, 1)
    info["train_config"] = cfg.to_dict()

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = MetamerGenPipeline.from_pretrained(run / "pipeline")
    for name in FP16_COMPONENTS:  # stored in fp16 (half the size); diffusers loads them back as fp32
        getattr(pipe, name).to(torch.float16)
    pipe.save_pretrained(tmp)
    info["export"] = {"fp16": list(FP16_COMPONENTS), "fp32": ["text_encoder", "image_encoder"]}
    info["torch"] = torch.__version__
    info["platform"] = platform.platform()
    try:
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    atomic_write(tmp / "build_info.json", lambda p: Path(p).write_text(json.dumps(info, indent=2) + "\n"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the previous model is replaced only by a complete new one
    print(f"Demo model written to {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB).")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where the model folder goes (default: the bundled one)")
    p.add_argument("--work", default="outputs/demo_build", help="intermediate outputs (world, vae, base, runs)")
    p.add_argument("--seed", type=int, default=0, help="world seed and the base seed of every stage")
    p.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test, not a model)")
    p.add_argument(
        "--resume-stages",
        nargs="*",
        choices=["world", "vae", "base", "encoder"],
        help="reuse these stages' outputs from --work instead of retraining them",
    )
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help=f"override {key}")
    p.add_argument("--base-from", default=None, help="reuse this demo model's VAE, text encoder and UNet (stages 2-3)")
    p.add_argument("--vae-from", default=None, help="reuse this demo model's VAE (stage 2; same seed and world)")
    p.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE", help="override a DemoModelConfig field"
    )
    p.add_argument("override", nargs="*", help="adapter-training config overrides, section.key=value")
    args = p.parse_args(argv)
    import yaml

    model_options = {}
    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--model-option takes KEY=VALUE, got {item!r}")
        model_options[key] = yaml.safe_load(value)
    steps = {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    build(
        args.out,
        work=args.work,
        seed=args.seed,
        quick=args.quick,
        steps=steps,
        resume_stages=args.resume_stages or (),
        overrides=args.override,
        base_from=args.base_from,
        vae_from=args.vae_from,
        model_options=model_options,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
