"""A distillation round's start and loss under torch's FSDP2 on 2 CPU processes (gloo); run by
``tests/test_distillation.py`` through torchrun, it writes what it measured to
``OUT/rank-R.json``. As ``tests/fsdp_sharded_run.py`` explains, accelerate shards only GPU
processes, so this shards the student with ``fully_shard`` itself: the round's start must cut
the (whole) teacher's weights into each process's slices, and the loss of the sharded student,
its teacher whole on every process, must be the unsharded student's.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import DDPMScheduler
from torch.distributed.fsdp import fully_shard

from videofusion.condition import Condition
from videofusion.config import TrainConfig
from videofusion.distillation import Distillation
from videofusion.pipeline import load_pipeline
from videofusion.sharding import whole_tensors
from videofusion.training_setup import TrainingModule, build_training_model


def main(teacher: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = TrainConfig(frames=4, resolution=16, base_channels=[8, 16],
                         residual_channels=[8, 16], condition="class",
                         residual_input="with_key_frame", key_frame_correction=True,
                         distill_from=str(teacher), distill_rounds=[4, 2],
                         output_dir=str(out)).validate()
    student = build_training_model(config, 3, 16, 10, None, latent=False)
    with torch.no_grad():  # away from the teacher, so that the round's start has to move it
        for p in student.parameters():
            p.add_(1.0)
    reference = copy.deepcopy(student)
    module = TrainingModule(student)
    fully_shard(student.residual)
    fully_shard(module)
    alphas = DDPMScheduler().alphas_cumprod
    lambdas = student.lambdas(4, 0.5)
    rounds = Distillation(config, out, student, alphas, lambdas)
    rounds.start_round(student, 0)
    rounds.start_round(reference, 0)
    names = [name for name, _ in student.named_parameters()]
    taught = load_pipeline(teacher).model.state_dict()
    gathered = whole_tensors(student.parameters(), keep=True)

    generator = torch.Generator().manual_seed(rank)
    video = torch.rand(2, 3, 4, 16, 16, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (2,), generator=generator)
    losses = [rounds.loss(m, video, Condition(labels), 0, torch.Generator().manual_seed(rank))
              .loss for m in (module, TrainingModule(reference))]
    losses[0].backward()
    found = {
        "parameter_type": type(next(student.parameters())).__name__,
        "started_as_teacher": all(torch.equal(taught[n], w)
                                  for n, w in zip(names, gathered, strict=True)),
        "loss_sharded": losses[0].item(), "loss_whole": losses[1].item(),
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(found, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
