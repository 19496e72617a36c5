"""Torch's FSDP2 on CPU processes (gloo) under the trainer's handling of sharded parameters; run
by ``tests/test_fsdp.py`` through torchrun, it writes what it measured to ``OUT/rank-R.json``.

accelerate never shards CPU processes, so this shards the trainer's model with torch's
``fully_shard`` itself, as accelerate's FSDP2 plugin does on GPUs (here the residual generator
and the root, two groups), and trains it a few steps: each process on its own shard of the
global batch, with the trainer's optimizer, EMA and objectives. Every process also trains an
unsharded copy on the whole global batch (the mean of the shards' losses), the step 1 process
with gradient accumulation would take. Then the trainer's pieces for sharded parameters are
measured against it: the gathered weights and EMA (``whole_tensors``), the exported model
(``whole_model``) sampled through the pipeline, the checkpoint's EMA (``TrainingState``)
written whole and read back into shards, and the per-process checksums.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.distributed.fsdp import fully_shard

from videofusion.config import TrainConfig
from videofusion.objective import diffusion_loss, image_diffusion_loss
from videofusion.sharding import local, whole_tensors
from videofusion.train import TrainingState, parameter_checksum, whole_model
from videofusion.training_report import training_pipeline
from videofusion.training_setup import TrainingModule, build_training_model, make_optimizer

STAGES = ["image", "joint", "joint"]
# AdamW as plain SGD (tests/test_distributed.py explains): a mis-scaled gradient shows
SGD = dict(learning_rate=1e4, adam_beta1=0.0, adam_beta2=0.0, adam_epsilon=1e6, weight_decay=0.0)


def make_ema(model) -> EMAModel:
    return EMAModel(model.parameters(), decay=0.9, use_ema_warmup=True, power=3 / 4)


def shard_of(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Clips, labels and a noise generator for one process's shard of one step."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    video = torch.rand(2, 3, 4, 16, 16, generator=generator) * 2 - 1
    return video, torch.randint(0, 10, (2,), generator=generator), generator


def loss(module, stage: str, step: int, rank: int, alphas, lambdas) -> torch.Tensor:
    video, labels, generator = shard_of(step, rank)
    if stage == "image":
        return image_diffusion_loss(partial(module, image=True), video[:, :, 0], alphas,
                                    generator=generator, class_labels=labels)
    return diffusion_loss(module, video, alphas, lambdas, generator=generator,
                          class_labels=labels).loss


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b, strict=True))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = TrainConfig(frames=4, resolution=16, base_channels=[8, 16],
                         residual_channels=[8, 16], condition="class", base_pretrain_steps=1,
                         max_steps=2, **SGD).validate()
    torch.manual_seed(0)
    model = build_training_model(config, 3, 16, 10, None, latent=False)
    reference = copy.deepcopy(model)
    template = copy.deepcopy(model).to("meta")
    module = TrainingModule(model)
    fully_shard(model.residual)
    fully_shard(module)
    reference_module = TrainingModule(reference)
    optimizer, reference_optimizer = (make_optimizer(config, m) for m in (model, reference))
    ema, reference_ema = make_ema(model), make_ema(reference)
    alphas = DDPMScheduler(num_train_timesteps=config.num_train_timesteps).alphas_cumprod
    lambdas = model.lambdas(config.frames, config.lambda_)

    for step, stage in enumerate(STAGES):
        loss(module, stage, step, rank, alphas, lambdas).backward()
        sum(loss(reference_module, stage, step, r, alphas, lambdas)
            for r in range(world)).div(world).backward()
        for opt, net, average in ((optimizer, model, ema),
                                  (reference_optimizer, reference, reference_ema)):
            opt.step()
            opt.zero_grad(set_to_none=True)
            average.step(net.parameters())

    main_process = rank == 0
    weights = whole_tensors(model.parameters(), keep=True)
    averaged = whole_tensors(ema.shadow_params, keep=True)
    exported = whole_model(template, model, ema.shadow_params, keep=main_process,
                           device=torch.device("cpu"))
    found = {
        "parameter_type": type(next(model.parameters())).__name__,
        "held": sum(local(p).numel() for p in model.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
        "weights_vs_reference": max_difference(weights, list(reference.parameters())),
        "ema_vs_reference": max_difference(averaged, reference_ema.shadow_params),
        "weights_moved": max_difference(weights, list(template_weights(config))),
        "exported_is_none": exported is None,
    }
    if exported is not None:
        state = exported.state_dict()
        names = [name for name, _ in model.named_parameters()]
        found["exported_equals_gathered_ema"] = list(state) == names and all(
            torch.equal(state[name], tensor) for name, tensor in zip(names, averaged, strict=True))
        pipe = training_pipeline(config, exported, DDPMScheduler(), None, None, [0.0] * 3)
        frames = pipe(class_labels=[1], num_frames=4, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), progress=False).frames
        found["sample_shape"], found["sample_finite"] = list(frames.shape), bool(
            torch.isfinite(torch.as_tensor(frames)).all())

    checksums = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(checksums, parameter_checksum(model.parameters()))
    found["checksums"] = [c.tolist() for c in checksums]
    found["whole_checksum"] = parameter_checksum(weights).tolist()

    state = TrainingState(ema, get_scheduler("constant", optimizer))
    ema_weights = state.whole_ema(keep=main_process)
    found["ema_weights_kept"] = len(ema_weights)
    if main_process:
        state.save(out, ema_weights=ema_weights)
    dist.barrier()
    restored = TrainingState(make_ema(model), get_scheduler("constant", optimizer))
    restored.load(out)
    found["ema_restored_bitwise"] = all(
        torch.equal(local(a), local(b)) and a.placements == b.placements
        for a, b in zip(ema.shadow_params, restored.ema.shadow_params, strict=True))
    found["ema_steps"] = [ema.optimization_step, restored.ema.optimization_step]
    (out / f"rank-{rank}.json").write_text(json.dumps(found, indent=2))
    dist.destroy_process_group()


def template_weights(config: TrainConfig):
    """The starting weights (the same seed): training must have moved them."""
    torch.manual_seed(0)
    return build_training_model(config, 3, 16, 10, None, latent=False).parameters()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
