"""Train the digit classifier and the digit video encoder behind the moving-digits metrics.

Both learn from real MovingDigits clips of the TRAIN split only (one digit per clip; handwritten
and font digits; 16, 32 and 64 px; colour and grey) and are scored on the TEST split, whose digit
images and trajectories are disjoint from training. The weights and the scores are written as
safetensors (scores, seed and command in the metadata) to ``src/videofusion/metrics/weights/``:

    .venv/bin/python scripts/train_digit_metrics.py --seed 0

The clips are rendered once into a pool at the networks' 32x32 input size; training then costs
only network time. See docs/metrics.md ("Moving-digits metrics") for the result.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from videofusion.data import MovingDigits
from videofusion.metrics.digits import (
    CLASSIFIER_WEIGHTS,
    COLORS,
    ENCODER_WEIGHTS,
    INPUT_SIZE,
    NO_DIGIT,
    DigitClassifier,
    DigitVideoEncoder,
    classifier_input,
    encoder_input,
    majority_digits,
)

NUM_FRAMES = 16
RESOLUTIONS = (16, 32, 32, 64)  # 32 px (the default data) twice as often
CHANNELS = (1, 3, 3)
GROUP = 8  # clips rendered per configuration draw
IGNORE = -100


def motion_class(velocity: np.ndarray, side: int, speed_range=(0.03, 0.1)) -> int:
    """Axis (0 horizontal, 1 vertical, 2 diagonal) x 3 + speed third (of MovingDigits' default
    range, in frame sides per frame): what a clip shows whatever its bounces."""
    vx, vy = np.abs(velocity)
    axis = 2 if vx > 1e-6 and vy > 1e-6 else int(vy > vx)
    low, high = speed_range
    third = int(np.clip((np.hypot(vx, vy) / side - low) / (high - low) * 3, 0, 2))
    return axis * 3 + third


def swap_digit(video_a: torch.Tensor, meta_a: dict, video_b: torch.Tensor, meta_b: dict,
               cut: int) -> torch.Tensor:
    """Clip A whose digit is replaced by clip B's digit from frame ``cut`` on (same motion)."""
    size = meta_a["digit_size"]
    bx, by = meta_b["top_left"][0, 0]
    glyph = video_b[:, 0, by : by + size, bx : bx + size]
    out = video_a.clone()
    for t in range(cut, video_a.shape[1]):
        x, y = meta_a["top_left"][0, t]
        out[:, t] = -1.0
        out[:, t, y : y + size, x : x + size] = glyph
    return out


def _to_uint8(clips: torch.Tensor) -> torch.Tensor:
    return ((clips + 1.0) * 127.5).round().to(torch.uint8)


def _to_float(clips: torch.Tensor) -> torch.Tensor:
    return clips.float() / 127.5 - 1.0


class ClipPool:
    """Real clips of one split as encoder inputs (uint8 ``(N, 3, F, 32, 32)``), with targets and
    a digit-swapped twin of every clip (same motion, another clip's digit from a random frame on).

    For MovingDigits the classifier's input (channel maximum, then resize) equals the channel
    maximum of the resized clip, so the classifier trains on frames of the same pool.
    """

    def __init__(self, split: str, size: int, seed: int, resolutions=RESOLUTIONS,
                 channels=CHANNELS, source: str = "both"):
        datasets = [
            MovingDigits(split=split, num_frames=NUM_FRAMES, resolution=r, channels=c,
                         source=source, length=10**8, seed=seed)
            for r in resolutions for c in channels
        ]
        rng = np.random.default_rng([seed, 7])
        clips, swapped, targets = [], [], []
        for _ in tqdm(range(-(-size // GROUP)), desc=f"rendering {split} clips"):
            ds = datasets[rng.integers(len(datasets))]
            indices = rng.integers(len(ds), size=GROUP).tolist()
            videos = torch.stack([ds[i]["video"] for i in indices])
            metas = [ds.metadata(i) for i in indices]
            twins = []
            for j, meta in enumerate(metas):
                other = next((k for k in range(GROUP)
                              if metas[k]["class_label"] != meta["class_label"]), (j + 1) % GROUP)
                cut = int(rng.integers(3, NUM_FRAMES - 2))
                twins.append(swap_digit(videos[j], meta, videos[other], metas[other], cut))
                targets.append((meta["class_label"], COLORS.index(meta["colors"][0]),
                                motion_class(meta["velocity"][0], min(ds.height, ds.width))))
            clips.append(_to_uint8(encoder_input(videos)))
            swapped.append(_to_uint8(encoder_input(torch.stack(twins))))
        self.clips = torch.cat(clips)[:size]
        self.swapped = torch.cat(swapped)[:size]
        self.targets = torch.tensor(targets)[:size]  # (N, 3): digit, colour, motion


def no_digit_frames(n: int, rng: torch.Generator) -> torch.Tensor:
    """Frames without a digit: dark noise, or smooth random blobs ``(n, 1, 32, 32)``."""
    noise = torch.rand(n, 1, 1, 1, generator=rng) * 0.15 * torch.randn(
        n, 1, INPUT_SIZE, INPUT_SIZE, generator=rng).abs()
    coarse = torch.rand(n, 1, 4, 4, generator=rng)
    blobs = F.interpolate(coarse, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic",
                          align_corners=False)
    blobs = (blobs - torch.rand(n, 1, 1, 1, generator=rng) * 0.6).clamp(0, 1)
    blobs = blobs * torch.rand(n, 1, 1, 1, generator=rng)
    pick = torch.rand(n, 1, 1, 1, generator=rng) < 0.5
    return torch.where(pick, noise, blobs).clamp(0, 1)


def augment(frames: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Dimmer digits and pixel noise, as imperfect generated frames show (half of the frames)."""
    n = len(frames)
    on = (torch.rand(n, 1, 1, 1, generator=rng) < 0.5).float()
    scale = 1.0 - on * torch.rand(n, 1, 1, 1, generator=rng) * 0.4
    noise = on * torch.rand(n, 1, 1, 1, generator=rng) * 0.08
    return (frames * scale + noise * torch.randn(frames.shape, generator=rng)).clamp(0, 1)


def classifier_batch(pool: ClipPool, clips: int, frames_per_clip: int,
                     rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames of random pool clips plus about one in eleven no-digit frames."""
    index = torch.randint(len(pool.clips), (clips,), generator=rng)
    frame = torch.randint(NUM_FRAMES, (clips, frames_per_clip), generator=rng)
    videos = (_to_float(pool.clips[index]) + 1.0) / 2.0  # (clips, 3, F, 32, 32) in [0, 1]
    frames = videos[torch.arange(clips)[:, None], :, frame].amax(dim=2, keepdim=True)
    labels = pool.targets[index, 0].repeat_interleave(frames_per_clip)
    blank = max(1, len(labels) // NO_DIGIT)
    x = torch.cat([frames.flatten(0, 1), no_digit_frames(blank, rng)])
    y = torch.cat([labels, torch.full((blank,), NO_DIGIT)])
    return augment(x, rng), y


@torch.inference_mode()
def frame_maps(encoder: DigitVideoEncoder, clips: torch.Tensor, name: str) -> torch.Tensor:
    """The frozen per-frame part of the encoder, once per pool clip (float16 to save memory)."""
    chunks = tqdm(clips.split(64), desc=f"frame maps ({name})")
    return torch.cat([encoder.frame_maps(_to_float(c)).half() for c in chunks])


def encoder_batch(maps: torch.Tensor, swapped: torch.Tensor, pool_targets: torch.Tensor,
                  clips: int, rng: torch.Generator):
    """Frame maps of pool clips with targets; a third are corrupted (shuffled frames, swapped
    digit, or a splice of two clips), the targets that no longer hold set to ``IGNORE``.

    The encoder's frame part acts on each frame alone, so corrupting the maps equals
    corrupting the clips.
    """
    index = torch.randint(len(maps), (clips,), generator=rng)
    batch = maps[index].float()
    digit, color, motion = pool_targets[index].clone().unbind(1)
    coherent = torch.ones(clips, dtype=torch.long)
    kinds = torch.randint(9, (clips,), generator=rng)  # 0-5 real; 6, 7, 8 corrupted
    for i in torch.nonzero(kinds >= 6).flatten().tolist():
        coherent[i] = 0
        if kinds[i] == 6:
            batch[i] = batch[i, torch.randperm(NUM_FRAMES, generator=rng)]
            motion[i] = IGNORE
        elif kinds[i] == 7:
            batch[i] = swapped[index[i]].float()
            digit[i] = color[i] = IGNORE
        else:
            other = int(torch.randint(len(maps), (1,), generator=rng))
            cut = int(torch.randint(3, NUM_FRAMES - 2, (1,), generator=rng))
            batch[i, cut:] = maps[other, cut:].float()
            digit[i] = color[i] = motion[i] = IGNORE
    targets = {"digit": digit, "color": color, "motion": motion, "coherent": coherent}
    return batch, targets


def train(model, forward, make_batch, loss_fn, steps: int, lr: float, name: str) -> None:
    """AdamW with a one-cycle schedule on the trainable parameters; frozen parts stay in eval
    mode (their batch-norm statistics are the trained classifier's)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for module in model.modules():
        if not any(p.requires_grad for p in module.parameters()):
            module.eval()
    bar = tqdm(range(steps), desc=name)
    for _ in bar:
        inputs, targets = make_batch()
        loss = loss_fn(forward(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()


@torch.inference_mode()
def evaluate_classifier(model: DigitClassifier, seed: int, clips: int) -> dict[str, float]:
    """Test-split frame and clip (majority) accuracy per source/resolution, and the guard."""
    scores = {}
    for source in ("handwritten", "font"):
        for resolution in (16, 32, 64):
            ds = MovingDigits(split="test", num_frames=NUM_FRAMES, resolution=resolution,
                              source=source, length=clips, seed=seed)
            videos = torch.stack([ds[i]["video"] for i in range(clips)])
            labels = np.array([ds.metadata(i)["class_label"] for i in range(clips)])
            preds = model(classifier_input(videos)).argmax(1).view(clips, -1).numpy()
            key = f"{source}_{resolution}px"
            scores[f"frame_accuracy_{key}"] = float((preds == labels[:, None]).mean())
            scores[f"clip_accuracy_{key}"] = float((majority_digits(preds) == labels).mean())
    rng = torch.Generator().manual_seed(seed + 1)
    blank = model(no_digit_frames(1000, rng)).argmax(1)
    scores["no_digit_accuracy"] = float((blank == NO_DIGIT).float().mean())
    return scores


@torch.inference_mode()
def evaluate_encoder(encoder: DigitVideoEncoder, pool: ClipPool, seed: int) -> dict[str, float]:
    """Accuracy of every head on (partly corrupted) test-split clips."""
    maps = frame_maps(encoder, pool.clips, "test")
    swapped = frame_maps(encoder, pool.swapped, "test, swapped")
    rng = torch.Generator().manual_seed(seed)
    inputs, targets = encoder_batch(maps, swapped, pool.targets, len(maps), rng)
    outputs = encoder.heads(encoder.temporal_features(inputs))
    scores = {}
    for key, target in targets.items():
        known = target != IGNORE
        scores[f"{key}_accuracy"] = float(
            (outputs[key].argmax(1)[known] == target[known]).float().mean()
        )
    return scores


def encoder_loss(outputs: dict, targets: dict) -> torch.Tensor:
    return sum(F.cross_entropy(outputs[k], targets[k], ignore_index=IGNORE) for k in targets)


def save(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=3000, help="train-split clips rendered")
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--encoder-steps", type=int, default=1500)
    parser.add_argument("--test-clips", type=int, default=300,
                        help="test-split clips per (source, resolution); x3 for the encoder")
    parser.add_argument("--out", type=Path, default=CLASSIFIER_WEIGHTS.parent)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    command = "python scripts/train_digit_metrics.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    record = {"command": command, "seed": str(args.seed), "pool_clips": str(args.pool)}
    rng = torch.Generator().manual_seed(args.seed)

    start = time.time()
    pool = ClipPool("train", args.pool, args.seed)
    classifier = DigitClassifier()
    train(classifier, classifier, lambda: classifier_batch(pool, 64, 2, rng), F.cross_entropy,
          args.classifier_steps, 3e-3, "classifier")
    scores = evaluate_classifier(classifier, args.seed, args.test_clips)
    for key, value in scores.items():
        print(f"classifier {key}: {value:.4f}")
    save(classifier, args.out / CLASSIFIER_WEIGHTS.name, {
        **record, "steps": str(args.classifier_steps),
        "minutes": f"{(time.time() - start) / 60:.1f}",
        **{k: f"{v:.4f}" for k, v in scores.items()},
    })

    start = time.time()
    encoder = DigitVideoEncoder()
    encoder.frame_trunk.load_state_dict(classifier.features[:-2].state_dict())
    encoder.frame_trunk.requires_grad_(False)
    encoder.eval()
    maps = frame_maps(encoder, pool.clips, "train")
    swapped = frame_maps(encoder, pool.swapped, "train, swapped")
    train(encoder, lambda x: encoder.heads(encoder.temporal_features(x)),
          lambda: encoder_batch(maps, swapped, pool.targets, 64, rng), encoder_loss,
          args.encoder_steps, 3e-3, "encoder")
    test_pool = ClipPool("test", 3 * args.test_clips, args.seed, resolutions=(32,),
                         channels=(3,))
    scores = evaluate_encoder(encoder, test_pool, args.seed)
    for key, value in scores.items():
        print(f"encoder {key}: {value:.4f}")
    save(encoder, args.out / ENCODER_WEIGHTS.name, {
        **record, "steps": str(args.encoder_steps),
        "minutes": f"{(time.time() - start) / 60:.1f}",
        **{k: f"{v:.4f}" for k, v in scores.items()},
    })


if __name__ == "__main__":
    main()
