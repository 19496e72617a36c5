"""Package a trained run as a model shipped with videofusion (`videofusion sample --model
NAME`; the digits model is also the default of `videofusion sample` and `make demo`).

    python scripts/bundle_model.py runs/bundled                      # the digits model
    python scripts/bundle_model.py runs/physics/run --model physics \
        --config-name physics_64.yaml --recipe runs/physics/commands.txt

reads RUN/pipeline (written at the end of training, or by `videofusion train --resume
--stop-at-step N` for a stopped run), stores its weights in fp16 (half the size; sampling casts
them back to fp32), its VAE's too for a latent model, in the folder ``videofusion.assets``
gives the model (or ``--target``), and writes a model card there with the exact commands, the
resolved config, the seed, the steps and the measured training time. The folder must stay under
MAX_BYTES (50 MB): a larger one is refused before anything is replaced. A class-conditioned
bundle records its class names (``class_names`` in model_index.json, so that `videofusion sample
--model physics --class-label cheetah` works; a run saved before names were recorded takes
them from its data's class folders) and its card lists them.
The shipped scheduler is ancestral DDPM (``--scheduler``): at this small training budget
deterministic DDIM (eta 0) leaves grainy backgrounds that the stochastic steps clean up.

A run fine-tuned from the shipped model (``videofusion train --init-from
src/videofusion/assets/default_model ...``) is bundled the same way: the card then counts the
parent's training too, read from the parent's ``training_record.json``, which every bundled
folder carries (steps, seconds, commands, its own parent). ``--recipe FILE`` names the commands
that made the run's data and VAE too (``scripts/train_physics.py`` writes it); the card quotes
them. A student distilled from a shipped model (``--distill-from``) samples with guidance 1, the
guidance folded in; a progressive student also keeps its DDIM and step count, a guidance student
takes ``--scheduler`` and ``--steps`` like any model.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
import yaml

from videofusion.assets import DEFAULT_MODEL, SHIPPED_MODELS
from videofusion.checkpoint import atomic_directory
from videofusion.choices import MOVING_DIGITS, SCHEDULERS
from videofusion.class_names import describe_classes, resolve_class_names
from videofusion.colour_anchoring import check_colour_anchoring
from videofusion.config import TrainConfig
from videofusion.pipeline import VideoFusionPipeline

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 50 * 2**20  # a shipped model, its VAE included


def training_record(run: Path, config_name: str, raw_weights: bool,
                    guidance: float | None = None, flags: str = "") -> dict:
    """Steps and wall-clock seconds of the run, from its per-step log; the commands that
    reproduce it (``flags``: the bundling command's own, besides the weights and guidance);
    its parent's record if it was fine-tuned (``init_from``)."""
    last = None
    with open(run / "metrics.jsonl") as handle:
        for line in handle:
            if line.strip():
                last = json.loads(line)
    if last is None:
        raise SystemExit(f"{run}/metrics.jsonl is empty: nothing was trained")
    config = yaml.safe_load((run / "config.yaml").read_text())
    image_steps = min(last["step"], config["base_pretrain_steps"])
    seconds = last.get("seconds")  # logs older than the field: the summary's total
    if seconds is None:
        seconds = json.loads((run / "train_summary.json").read_text())["wall_clock_seconds"]
    export = " --raw-weights" if raw_weights else ""
    bundle = export + ("" if guidance is None else f" --guidance {guidance:g}") + flags
    distilled = bool(config.get("distill_from"))
    record = {"steps": last["step"], "image_steps": image_steps,
              "joint_steps": 0 if distilled else last["step"] - image_steps,
              "distillation_steps": last["step"] if distilled else 0,
              "distillation_kind": config.get("distill_kind", "progressive"), "seconds": seconds,
              "seed": config["seed"], "batch_size": config["batch_size"],
              "raw_weights": raw_weights, "config": config,
              "commands": [f"videofusion train --config configs/{config_name}"
                           f"{changed_flags(config, config_name)} "
                           f"--stop-at-step {last['step']}{export}",
                           f"python scripts/bundle_model.py {config['output_dir']}{bundle}"]}
    if config.get("init_from") or distilled:
        parent = Path(config.get("init_from") or config["distill_from"])
        parent = parent if parent.is_absolute() else ROOT / parent
        if not (parent / "training_record.json").is_file():
            raise SystemExit(f"{run} was fine-tuned from {parent}, which has no "
                             "training_record.json: its training cannot be counted")
        record["parent"] = json.loads((parent / "training_record.json").read_text())
        if same_run(record["parent"]["commands"][0], record["commands"][0]):
            raise SystemExit(f"{parent} already holds {run} (maybe at an earlier step): bundling "
                             "it again would make the run its own parent (restore the folder "
                             "it was fine-tuned from first)")
    return record


def same_run(command: str, other: str) -> bool:
    """Whether two recorded training commands are one run, stopped at the same or another step
    (a run continued with --resume records the same command with a later --stop-at-step)."""
    def without_stop(line: str) -> str:
        return re.sub(r" --stop-at-step \d+", "", line)
    return without_stop(command) == without_stop(other)


def changed_flags(config: dict, config_name: str) -> str:
    """The `videofusion train` flags that turn configs/CONFIG_NAME into the run's ``config``
    (a fine-tune's --init-from, and whatever else the run changed), in the config's order."""
    recipe = TrainConfig.from_yaml(ROOT / "configs" / config_name).to_dict()
    flags = []
    for key, value in config.items():
        if value == recipe.get(key):
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            flags.append(f"--{name} {','.join(str(v) for v in value)}")
        else:
            flags.append(f"--{name} {value}")
    return "".join(f" {flag}" for flag in flags)


def lineage(record: dict) -> list[dict]:
    """The record's ancestors first, itself last."""
    return (lineage(record["parent"]) if record.get("parent") else []) + [record]


def total_seconds(record: dict) -> float:
    return sum(r["seconds"] for r in lineage(record))


def data_description(name: str, record: dict, parameters: dict) -> tuple[str, str]:
    """The card's title and its paragraph on the data and the conditioning of model ``name``."""
    config = record["config"]
    side = f"{config['resolution']}x{config['resolution']}"
    label_drop = TrainConfig().replace(config).label_drop
    drop = (f"dropped independently (the label {label_drop:.0%}, the caption "
            f"{config['cond_drop']:.0%} of the time in the last run), so either works alone "
            "and classifier-free guidance works")
    classes = describe_classes(record.get("classes", []))
    if name == "physics":
        return (
            "videofusion physics model: rendered DeepMind Control clips, class + text "
            "conditioned",
            "VideoFusion (spec §1-§4) trained with the project's own trainer on DeepMind Control "
            "Suite scenes rendered headless with scripted policies (`videofusion data "
            f"render-dmc`, docs/data.md): {config['frames']} frames, {side}, lambda = "
            f"{config['lambda']}, in the latent space of the project's own VAE (`vae/`, "
            f"{parameters['vae']:,} parameters, trained with `videofusion train-vae` on the same "
            "clips; the networks see its latents, read from a latent cache). Conditioned on the "
            f"domain (class label: {classes}; sampled by name or index, `--class-label "
            "cheetah`) and on the caption (\"a cheetah running\", MiniLM sentence encoder, "
            f"offline), {drop}.")
    return (
        "videofusion default model: moving digits, class + text conditioned",
        "VideoFusion (spec §1-§4) trained with the project's own trainer on the built-in moving "
        "digits (one handwritten digit per clip, 7 colours, constant velocity with bounces): "
        f"{config['frames']} frames, {side}, colour, lambda = {config['lambda']}, conditioned "
        f"on the digit class (10 classes, named by their digit: {classes}) and on the caption "
        "(\"a red digit 3 moving down and to the left\", MiniLM sentence encoder, offline), "
        f"{drop}.")


def model_card(name: str, record: dict, parameters: dict, sampler: str, steps: int,
               guidance: float, distilled_guidance: float | None = None,
               reconstruction_guidance: float | None = None,
               colour_anchoring: float | None = None) -> str:
    config = record["config"]
    runs = lineage(record)
    seconds = total_seconds(record)
    title, data = data_description(name, record, parameters)
    base = (f"base generator {parameters['base']:,} + residual generator "
            f"{parameters['residual']:,}")
    if "vae" in parameters:
        base += f" (+ VAE {parameters['vae']:,})"
    runs_text = " then ".join(
        (f"{r['distillation_steps']:,} steps of {r.get('distillation_kind', 'progressive')} "
         "distillation" if
         r.get("distillation_steps") else f"{r['image_steps']:,} image steps (stage 1) + "
         f"{r['joint_steps']:,} joint steps (stage 2)")
        + f", batch {r['batch_size']}, seed {r['seed']}" for r in runs)
    weights = ("the raw weights of the last step (exported with `--raw-weights`)"
               if record["raw_weights"] else f"EMA, decay {config['ema_decay']}")
    if record.get("recipe"):
        retrain = ("Retrain it: every stage below is resumable and skipped once complete; "
                   "`scripts/train_physics.py` ran them in this order")
        commands = "\n".join(f"    {line}" for line in record["recipe"])
    else:
        retrain = ("Retrain it (resumable; stop any time with Ctrl-C and continue with "
                   "`--resume`; each\n`--init-from` run starts from the model the commands "
                   "before it bundled)")
        commands = "\n".join(f"    {line}" for r in runs for line in r["commands"])
    correction = ("; the key frame's prediction is corrected by the residual generator "
                  "(`--key-frame-correction`, spec §7)" if config.get("key_frame_correction")
                  else "")
    progressive = config.get("distill_kind", "progressive") == "progressive"
    distilled = "" if distilled_guidance is None else (
        f"| distilled | a {steps}-step student of progressive distillation (rounds "
        f"{','.join(str(n) for n in config['distill_rounds'])}), guidance "
        f"{distilled_guidance:g} folded in: one pass of each network per step (spec §7) |\n"
        if progressive else
        f"| distilled | guidance {distilled_guidance:g} folded in (guidance distillation): one "
        f"pass of each network per step of its teacher's sampler (spec §7) |\n")
    guidance_row = (f"{guidance:g} by default (`default_guidance_scale`; `--guidance` overrides)"
                    if distilled_guidance is None else
                    f"{guidance:g}, the only value it takes (its guidance is folded in)")
    if reconstruction_guidance:
        guidance_row += (f"; image-to-video: reconstruction guidance {reconstruction_guidance:g} "
                         "with its own sampler, 0 with another "
                         "(`default_reconstruction_guidance_scale`; `--reconstruction-guidance` "
                         "overrides)")
    anchoring = "" if not colour_anchoring else (
        f"| colour anchoring | {colour_anchoring:g}: every frame's foreground colour is moved "
        "towards the key frame's at each step once the noise is at most the signal "
        "(sigma_t <= 1), with any sampler (`default_colour_anchoring`; "
        "`--colour-anchoring` overrides, 0 turns it off; docs/method.md, §7) |\n")
    return f"""# {title}

{data} Residual generator input:
`{config['residual_input']}` (spec §2){correction}.

| | |
|---|---|
| parameters | {base} |
| training | {runs_text} |
| training time | {seconds:,.0f} s ({seconds / 3600:.1f} h) on a shared 2-core CPU (no GPU), fp32 |
| weights | {weights} |
| storage | fp16 safetensors (cast to fp32 when loaded) |
| sampler | {sampler}, {steps} steps (`scheduler/`, `default_inference_steps`; `--scheduler`, \
`--steps` override) |
| guidance | {guidance_row} |
{anchoring}{distilled}
{retrain}:

{commands}

The last run's resolved config, as saved at its last resume, is `training_config.yaml` beside
this card; `training_record.json` has every run's steps, seconds and commands. Its quality,
measured with `videofusion eval`, is in the project README.
"""


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def video_classes(data: str) -> list[str]:
    """The class names of a video folder by label: its class subfolders, as ``VideoFolder``
    reads them."""
    from videofusion.data.video_folder import scan

    root = Path(data) if Path(data).is_absolute() else ROOT / data
    videos, folders = scan(root)
    return sorted({p.relative_to(root).parts[0] for p in [*videos, *folders]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training output folder with pipeline/")
    parser.add_argument("--model", choices=tuple(SHIPPED_MODELS), default=DEFAULT_MODEL,
                        help="the shipped model this run becomes (default %(default)s)")
    parser.add_argument("--target", type=Path,
                        help="write here instead of the model's folder in the package (a trial "
                             "bundle)")
    parser.add_argument("--config-name", default="moving_digits_bundled.yaml",
                        help="the configs/ file the run was started from")
    parser.add_argument("--recipe", type=Path,
                        help="a file of the commands that made the run, its data and VAE, one "
                             "a line: the card quotes them")
    parser.add_argument("--raw-weights", action="store_true",
                        help="RUN/pipeline holds raw (not EMA) weights: say so in the card")
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS),
                        help="the sampler shipped with the model (default ancestral DDPM; a "
                             "progressive student keeps its own DDIM)")
    parser.add_argument("--steps", type=int,
                        help="its step count: the default of `videofusion sample` / `eval` / the "
                             "studio for this model with that sampler (default 25; a "
                             "progressive student keeps its own)")
    parser.add_argument("--guidance", type=float,
                        help="the guidance scale measured best for this model: the default of "
                             "`videofusion sample` / `eval` for it (unset: 2)")
    parser.add_argument("--reconstruction-guidance", type=float,
                        help="image-to-video's reconstruction guidance measured for this model "
                             "(docs/method.md, §7): its default (unset: 0, off)")
    parser.add_argument("--colour-anchoring", type=float,
                        help="the colour anchoring measured for this model (docs/method.md, §7): "
                             "its default with any sampler (unset: 0, off)")
    args = parser.parse_args()
    if not (args.run / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"{args.run}/pipeline is missing: export it with `videofusion train "
                         "--config ... --resume --stop-at-step N`")
    target = args.target or SHIPPED_MODELS[args.model].folder
    pipe = VideoFusionPipeline.from_pretrained(args.run / "pipeline", dtype=torch.float16)
    folded = pipe.config.get("distilled_guidance_scale") is not None
    # a progressive student is tied to its DDIM and step count; a guidance student only to
    # guidance 1 (it runs any sampler at any step count, as its teacher did)
    progressive = folded and pipe.config.get("distilled_steps") is not None
    if folded and args.guidance is not None:
        raise SystemExit("a distilled student samples with guidance 1, its guidance folded in: "
                         "drop --guidance")
    if progressive and (args.scheduler or args.steps):
        raise SystemExit("a progressive student ships as it was distilled (its DDIM, its "
                         "steps): drop --scheduler and --steps")
    if not progressive:
        args.scheduler, args.steps = args.scheduler or "ddpm", args.steps or 25
    steps = pipe.config.distilled_steps if progressive else args.steps
    flags = "".join(f" --{flag} {value}" for flag, value in (
        ("model", args.model if args.model != DEFAULT_MODEL else None),
        ("config-name", args.config_name if args.model != DEFAULT_MODEL else None),
        ("recipe", args.recipe), ("scheduler", args.scheduler), ("steps", args.steps),
        ("reconstruction-guidance", args.reconstruction_guidance),
        ("colour-anchoring", args.colour_anchoring))
        if value is not None)
    record = training_record(args.run, args.config_name, args.raw_weights, args.guidance, flags)
    if args.recipe is not None:
        record["recipe"] = [line for line in args.recipe.read_text().splitlines() if line]
    if pipe.num_classes is not None:  # the bundle records its class names, the card lists them
        names, data = pipe.config.get("class_names"), record["config"]["data"]
        if names is None and data != MOVING_DIGITS:  # a run saved before names were recorded
            names = video_classes(data)
        pipe.register_to_config(class_names=resolve_class_names(names, pipe.num_classes))
        record["classes"] = pipe.class_names
    if not progressive:
        pipe.use_scheduler(args.scheduler)
        pipe.register_to_config(default_inference_steps=steps)
    if args.guidance is not None:
        pipe.register_to_config(default_guidance_scale=args.guidance)
    if args.reconstruction_guidance is not None:
        pipe.register_to_config(default_reconstruction_guidance_scale=args.reconstruction_guidance)
    if args.colour_anchoring is not None:
        try:
            check_colour_anchoring(args.colour_anchoring, latent=pipe.vae is not None)
        except ValueError as error:
            raise SystemExit(f"--colour-anchoring: {error}") from None
        pipe.register_to_config(default_colour_anchoring=args.colour_anchoring)
    parameters = {name: sum(p.numel() for p in module.parameters())
                  for name, module in (("base", pipe.base), ("residual", pipe.residual),
                                       ("vae", pipe.vae)) if module is not None}
    with atomic_directory(target) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(args.run / "config.yaml", Path(tmp) / "training_config.yaml")
        card = model_card(args.model, record, parameters, type(pipe.scheduler).__name__,
                          steps, pipe.default_guidance,
                          pipe.config.get("distilled_guidance_scale"),
                          pipe.config.get("default_reconstruction_guidance_scale"),
                          pipe.config.get("default_colour_anchoring"))
        (Path(tmp) / "README.md").write_text(card)
        kept = {k: v for k, v in record.items() if k != "config"}
        (Path(tmp) / "training_record.json").write_text(json.dumps(kept, indent=2) + "\n")
        size = folder_bytes(Path(tmp))
        if size > MAX_BYTES:  # leaves the folder in place as it was
            raise SystemExit(f"the bundle would be {size / 2**20:.1f} MB, over the "
                             f"{MAX_BYTES / 2**20:.0f} MB a shipped model may take: {target} "
                             "is left as it was")
    print(f"wrote {target} ({size / 2**20:.1f} MB of at most {MAX_BYTES / 2**20:.0f} MB, "
          f"{len(lineage(record))} run(s), {total_seconds(record) / 3600:.1f} h of training)")


if __name__ == "__main__":
    main()
