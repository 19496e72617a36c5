"""``videofusion info``: what a model folder holds, read from its files (nothing built)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from videofusion.assets import SHIPPED_MODELS, shipped_model
from videofusion.class_names import describe_classes, folder_class_names
from videofusion.safety import check_safetensors


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="describe a model folder",
                              description="Components, parameter counts, conditioning (class "
                                          "names included), lambda and sample size of a "
                                          "VideoFusionPipeline folder.")
    p.add_argument("model_dir", nargs="?", help="a VideoFusionPipeline folder")
    p.add_argument("--model-dir", dest="model_dir_flag", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=tuple(SHIPPED_MODELS),
                   help="a model shipped with the package, instead of a folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_info)
    return p


def model_info(folder: Path) -> dict:
    """A pipeline folder's description from model_index.json, configs and safetensors headers."""
    from safetensors import safe_open

    index_file = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not index_file.is_file():
        raise ValueError(f"{folder} is not a VideoFusionPipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    check_safetensors(folder)
    components, parameters = {}, {}
    for name, spec in index.items():
        # components are [library, class] pairs with a folder; other lists are settings
        # (signal_leak_mean, class_names)
        if name.startswith("_") or not (isinstance(spec, list) and len(spec) == 2
                                        and isinstance(spec[1], str)
                                        and (folder / name).is_dir()):
            continue
        components[name] = spec[1]
        files = sorted((folder / name).glob("*.safetensors"))
        if files:
            count = 0
            for file in files:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        shape = handle.get_slice(key).get_shape()
                        count += math.prod(shape)
            parameters[name] = count
    residual = json.loads((folder / "residual" / "config.json").read_text())
    conditions = []
    if residual.get("num_classes") is not None:
        conditions.append(f"class ({residual['num_classes']} classes)")
    if residual.get("cross_attention_dim"):
        conditions.append(f"text ({index.get('text_encoder_kind') or 'unknown'} encoder)")
    condition = " + ".join(conditions) or "none"
    class_names = folder_class_names(folder)
    summary_file = folder.parent / "train_summary.json"
    return {
        "model_dir": str(folder),
        "kind": "videofusion" if "base" in components else "vdm (no base generator)",
        "components": components,
        "parameters": {**parameters, "total": sum(parameters.values())},
        "condition": condition,
        # one per label; a folder that recorded none is named by its indices
        "class_names": class_names,
        "default_lambda": index.get("default_lambda"),
        "default_guidance_scale": index.get("default_guidance_scale"),
        "default_inference_steps": index.get("default_inference_steps"),
        "sample_size": index.get("sample_size"),
        "residual_input": index.get("residual_input"),
        "key_frame_correction": bool(index.get("key_frame_correction", False)),
        # distillation (videofusion.distillation): the guidance folded in, the steps (progressive)
        "distilled": None if index.get("distilled_guidance_scale") is None else {
            "guidance_scale": index["distilled_guidance_scale"],
            "steps": index.get("distilled_steps")},
        "fps": index.get("fps"),
        "training": json.loads(summary_file.read_text()) if summary_file.is_file() else None,
    }


def run_info(args: argparse.Namespace) -> int:
    folder = args.model_dir or args.model_dir_flag
    if folder is not None and args.model is not None:
        raise ValueError("pass a model folder or --model NAME, not both")
    if args.model is not None:
        folder = shipped_model(args.model).folder
    if folder is None:
        raise ValueError("pass a model folder: videofusion info PATH (or --model NAME)")
    info = model_info(Path(folder))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model folder:   {info['model_dir']}")
    print(f"kind:           {info['kind']}")
    for name, cls in info["components"].items():
        count = info["parameters"].get(name)
        print(f"  {name:<12}  {cls}" + (f"  {count:,} parameters" if count else ""))
    print(f"parameters:     {info['parameters']['total']:,}")
    print(f"conditioning:   {info['condition']}")
    if info["class_names"] is not None:
        print(f"classes:        {describe_classes(info['class_names'])}")
    print(f"lambda:         {info['default_lambda']}")
    if info["default_guidance_scale"] is not None:
        print(f"guidance:       {info['default_guidance_scale']} (the model's default)")
    if info["default_inference_steps"] is not None:
        print(f"steps:          {info['default_inference_steps']} (the model's default, with "
              "its own scheduler)")
    print(f"sample size:    {info['sample_size']}x{info['sample_size']}")
    print(f"residual input: {info['residual_input']}")
    if info["key_frame_correction"]:
        print("key frame:      corrected by the residual generator (spec §7)")
    distilled = info["distilled"]
    if distilled:
        steps = (f"{distilled['steps']} DDIM steps, " if distilled["steps"] is not None
                 else "its teacher's sampler, ")
        print(f"distilled:      {steps}guidance {distilled['guidance_scale']:g} folded in (one "
              "pass per step; sampled with guidance 1)")
    training = info["training"]
    if training:
        stages = f"{training['base_pretrain_steps']} image + {training['joint_steps']} joint"
        distillation = training.get("distillation")
        if distillation:
            rounds = distillation.get("rounds")
            stages = ("guidance distillation" if rounds is None else
                      f"{distillation.get('kind', 'progressive')} distillation, rounds "
                      + ",".join(str(n) for n in rounds))
        print(f"trained:        {training['steps']} steps ({stages}), "
              f"{training['wall_clock_seconds']:.0f} s, {training['frames']} frames at "
              f"{training['resolution']} px")
    return 0


