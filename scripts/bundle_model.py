"""Package a trained run as the model shipped with videofusion (the default of `videofusion
sample` and `make demo`).

    python scripts/bundle_model.py runs/bundled

reads RUN/pipeline (written at the end of training, or by `videofusion train --resume
--stop-at-step N` for a stopped run), stores its weights in fp16 (half the size; sampling casts
them back to fp32) under src/videofusion/assets/default_model/, and writes a model card there
with the exact command, the resolved config, the seed, the steps and the measured training time.
The shipped scheduler is ancestral DDPM (``--scheduler``): at this small training budget
deterministic DDIM (eta 0) leaves grainy backgrounds that the stochastic steps clean up.

A run fine-tuned from the shipped model (``videofusion train --init-from
src/videofusion/assets/default_model ...``) is bundled the same way: the card then counts the
parent's training too, read from the parent's ``training_record.json``, which every bundled
folder carries (steps, seconds, commands, its own parent).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml

from videofusion.checkpoint import atomic_directory
from videofusion.choices import SCHEDULERS
from videofusion.config import TrainConfig
from videofusion.pipeline import VideoFusionPipeline

TARGET = Path(__file__).resolve().parents[1] / "src" / "videofusion" / "assets" / "default_model"


def training_record(run: Path, config_name: str, raw_weights: bool,
                    guidance: float | None = None, sampling: str = "") -> dict:
    """Steps and wall-clock seconds of the run, from its per-step log; the commands that
    reproduce it; its parent's record if it was fine-tuned (``init_from``)."""
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
    bundle = export + ("" if guidance is None else f" --guidance {guidance:g}") + sampling
    record = {"steps": last["step"], "image_steps": image_steps,
              "joint_steps": last["step"] - image_steps, "seconds": seconds,
              "seed": config["seed"], "batch_size": config["batch_size"],
              "raw_weights": raw_weights, "config": config,
              "commands": [f"videofusion train --config configs/{config_name}"
                           f"{changed_flags(config, config_name)} "
                           f"--stop-at-step {last['step']}{export}",
                           f"python scripts/bundle_model.py {config['output_dir']}{bundle}"]}
    if config.get("init_from"):
        parent = Path(config["init_from"])
        parent = parent if parent.is_absolute() else TARGET.parents[3] / parent
        if not (parent / "training_record.json").is_file():
            raise SystemExit(f"{run} was fine-tuned from {parent}, which has no "
                             "training_record.json: its training cannot be counted")
        record["parent"] = json.loads((parent / "training_record.json").read_text())
        if record["parent"]["commands"][0] == record["commands"][0]:  # the same training
            raise SystemExit(f"{parent} already holds {run}: bundling it again would make the "
                             "run its own parent (restore the parent's folder first)")
    return record


def changed_flags(config: dict, config_name: str) -> str:
    """The `videofusion train` flags that turn configs/CONFIG_NAME into the run's ``config``
    (a fine-tune's --init-from, and whatever else the run changed), in the config's order."""
    recipe = TrainConfig.from_yaml(TARGET.parents[3] / "configs" / config_name).to_dict()
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


def model_card(record: dict, parameters: dict, sampler: str, steps: int,
               guidance: float) -> str:
    config = record["config"]
    runs = lineage(record)
    seconds = total_seconds(record)
    base = (f"base generator {parameters['base']:,} + residual generator "
            f"{parameters['residual']:,}")
    runs_text = " then ".join(
        f"{r['image_steps']:,} image steps (stage 1) + {r['joint_steps']:,} joint steps "
        f"(stage 2), batch {r['batch_size']}, seed {r['seed']}" for r in runs)
    weights = ("the raw weights of the last step (exported with `--raw-weights`)"
               if record["raw_weights"] else f"EMA, decay {config['ema_decay']}")
    commands = "\n".join(f"    {line}" for r in runs for line in r["commands"])
    label_drop = TrainConfig().replace(config).label_drop
    correction = ("; the key frame's prediction is corrected by the residual generator "
                  "(`--key-frame-correction`, spec §7)" if config.get("key_frame_correction")
                  else "")
    return f"""# videofusion default model: moving digits, class + text conditioned

VideoFusion (spec §1-§4) trained with the project's own trainer on the built-in moving digits
(one handwritten digit per clip, 7 colours, constant velocity with bounces):
{config['frames']} frames, {config['resolution']}x{config['resolution']}, colour, lambda =
{config['lambda']}, conditioned on the digit class (10 classes) and on the caption ("a red digit
3 moving down and to the left", MiniLM sentence encoder, offline), dropped independently (the
label {label_drop:.0%}, the caption {config['cond_drop']:.0%} of the time in the last run), so
either works alone and classifier-free guidance works. Residual generator input:
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
| guidance | {guidance:g} by default (`default_guidance_scale`; `--guidance` overrides) |

Retrain it (resumable; stop any time with Ctrl-C and continue with `--resume`; each
`--init-from` run starts from the model the commands before it bundled):

{commands}

The last run's resolved config, as saved at its last resume, is `training_config.yaml` beside
this card; `training_record.json` has every run's steps, seconds and commands. Its quality,
measured with `videofusion eval`, is in the project README.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training output folder with pipeline/")
    parser.add_argument("--config-name", default="moving_digits_bundled.yaml",
                        help="the configs/ file the run was started from")
    parser.add_argument("--raw-weights", action="store_true",
                        help="RUN/pipeline holds raw (not EMA) weights: say so in the card")
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="ddpm",
                        help="the sampler shipped with the model (default ancestral DDPM)")
    parser.add_argument("--steps", type=int, default=25,
                        help="its step count: the default of `videofusion sample` / `eval` / the "
                             "studio for this model with that sampler (default 25)")
    parser.add_argument("--guidance", type=float,
                        help="the guidance scale measured best for this model: the default of "
                             "`videofusion sample` / `eval` for it (unset: 2)")
    args = parser.parse_args()
    if not (args.run / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"{args.run}/pipeline is missing: export it with `videofusion train "
                         "--config ... --resume --stop-at-step N`")
    sampling = f" --scheduler {args.scheduler} --steps {args.steps}"
    record = training_record(args.run, args.config_name, args.raw_weights, args.guidance,
                             sampling)
    pipe = VideoFusionPipeline.from_pretrained(args.run / "pipeline", dtype=torch.float16)
    pipe.use_scheduler(args.scheduler)
    pipe.register_to_config(default_inference_steps=args.steps)
    if args.guidance is not None:
        pipe.register_to_config(default_guidance_scale=args.guidance)
    parameters = {"base": sum(p.numel() for p in pipe.base.parameters()),
                  "residual": sum(p.numel() for p in pipe.residual.parameters())}
    with atomic_directory(TARGET) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(args.run / "config.yaml", Path(tmp) / "training_config.yaml")
        card = model_card(record, parameters, type(pipe.scheduler).__name__, args.steps,
                          pipe.default_guidance)
        (Path(tmp) / "README.md").write_text(card)
        kept = {k: v for k, v in record.items() if k != "config"}
        (Path(tmp) / "training_record.json").write_text(json.dumps(kept, indent=2) + "\n")
    size = sum(f.stat().st_size for f in TARGET.rglob("*") if f.is_file())
    print(f"wrote {TARGET} ({size / 2**20:.1f} MB, {len(lineage(record))} run(s), "
          f"{total_seconds(record) / 3600:.1f} h of training)")


if __name__ == "__main__":
    main()
