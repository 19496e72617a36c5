"""A table of bad values for every CLI number and path option: each one exits 2 with one line on
stderr, before any work, never a traceback (docs/CONVENTIONS.md)."""

import shutil
import signal

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler

from videofusion.cli import main
from videofusion.pipeline import VideoFusionPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--output-dir", "{tmp}/run", "--frames", "4", "--resolution", "16",
         "--max-steps", "1"]
SAMPLE = ["sample", "--model-dir", "{model}", "--frames", "4", "--steps", "1", "--class-label", "1",
          "--out", "{tmp}/samples"]
EVAL = ["eval", "--fake", "{model}", "--num-videos", "2", "--num-frames", "4",
        "--metrics", "content", "--out", "{tmp}/report.json"]
BENCH = ["bench", "--quick", "--out", "{tmp}/bench.json"]
DMC = ["data", "render-dmc", "--out", "{tmp}/dmc", "--clips", "1"]
VAE = ["train-vae", "--data", "moving-digits", "--resolution", "16", "--out", "{tmp}/vae"]
CACHE = ["data", "cache-latents", "--frames", "4", "--resolution", "16", "--vae", "{tmp}/no_vae",
         "--out", "{tmp}/cache"]

CASES = [
    # train: numbers
    (TRAIN + ["--frames", "1"], "frames"),
    (TRAIN + ["--frames", "-3"], "frames"),
    (TRAIN + ["--frames", "100000000"], "frames must be <= 1024"),
    (TRAIN + ["--resolution", "-16"], "resolution"),
    (TRAIN + ["--resolution", "100000"], "would need"),
    (TRAIN + ["--batch-size", "0"], "batch_size"),
    (TRAIN + ["--batch-size", "100000"], "batch_size must be <="),
    (TRAIN + ["--channels", "2"], "channels"),
    (TRAIN + ["--lambda", "nan"], "finite"),
    (TRAIN + ["--lambda", "inf"], "finite"),
    (TRAIN + ["--lambda", "1.5"], "lambda"),
    (TRAIN + ["--lr", "-1"], "learning_rate"),
    (TRAIN + ["--lr", "nan"], "finite"),
    (TRAIN + ["--weight-decay", "-0.1"], "weight_decay"),
    (TRAIN + ["--ema-decay", "1"], "ema_decay"),
    (TRAIN + ["--cond-drop", "inf"], "finite"),
    (TRAIN + ["--beta-start", "0.5", "--beta-end", "0.1"], "beta_start"),
    (TRAIN + ["--max-grad-norm", "0"], "max_grad_norm"),
    (TRAIN + ["--snr-gamma=-inf"], "finite"),
    (TRAIN + ["--base-teacher-forcing", "2"], "base_teacher_forcing"),
    (TRAIN + ["--sample-guidance", "nan"], "finite"),
    (TRAIN + ["--max-steps", "0"], "max_steps"),
    (TRAIN + ["--checkpoint-every", "0"], "checkpoint_every"),
    (TRAIN + ["--max-nonfinite-steps", "-1"], "max_nonfinite_steps"),
    (TRAIN + ["--num-workers", "-1"], "num_workers"),
    (TRAIN + ["--seed", "-1"], "seed"),
    (TRAIN + ["--base-channels", "8,x"], "base-channels"),
    (TRAIN + ["--gradient-accumulation-steps", "0"], "gradient_accumulation_steps"),
    # train: paths
    (TRAIN + ["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    (TRAIN + ["--config", "{tmp}/bad.yaml"], "bad.yaml"),
    (TRAIN + ["--output-dir", "{tmp}/a_file"], "a_file"),
    (TRAIN + ["--data", "{tmp}/no_videos_here"], "no_videos_here"),
    (TRAIN + ["--vae", "{tmp}/no_vae"], "no_vae"),
    (TRAIN + ["--init-from", "{tmp}/no_pipeline"], "no_pipeline"),
    (TRAIN + ["--base-from", "{tmp}/no_unet"], "no_unet"),
    # sample: numbers
    (SAMPLE + ["--guidance", "nan"], "finite"),
    (SAMPLE + ["--residual-guidance", "-1"], "--residual-guidance"),
    (SAMPLE + ["--eta", "inf"], "finite"),
    (SAMPLE + ["--eta", "-0.5"], "--eta"),
    (SAMPLE + ["--lambda", "2"], "--lambda"),
    (SAMPLE + ["--frames", "100000000"], "would need"),
    (SAMPLE + ["--frames", "1"], "--frames"),
    (SAMPLE + ["--resolution", "-8"], "--resolution"),
    (SAMPLE + ["--resolution", "100000"], "would need"),
    (SAMPLE + ["--resolution", "9"], "9"),
    (SAMPLE + ["--num-videos", "0"], "--num-videos"),
    (SAMPLE + ["--num-videos", "100000"], "would need"),
    (SAMPLE + ["--steps", "0"], "--steps"),
    (SAMPLE + ["--fps", "0"], "--fps"),
    (SAMPLE + ["--scale", "0"], "--scale"),
    (SAMPLE + ["--seed", "-1"], "--seed"),
    (SAMPLE + ["--base-seed", "99999999999999999999999"], "--base-seed"),
    (SAMPLE + ["--class-label", "-1"], "--class-label"),
    (SAMPLE + ["--class-label", "10"], "class"),
    (SAMPLE + ["--control-grid", "0,3"], "--control-grid"),
    (SAMPLE + ["--device", "gpu"], "--device"),
    (SAMPLE + ["--device", "cuda:x"], "cuda:N"),
    (SAMPLE + ["--dtype", "fp8"], "--dtype"),
    # sample: paths
    (SAMPLE + ["--model-dir", "{tmp}/no_model"], "no_model"),
    (SAMPLE + ["--model-dir", "{corrupt}"], "diffusion_pytorch_model.safetensors"),
    (SAMPLE + ["--model-dir", "{tmp}"], "model_index.json"),
    (SAMPLE + ["--out", "{tmp}/a_file"], "a_file"),
    (SAMPLE + ["--out", "{tmp}/taken"], "video_000.mp4"),
    (SAMPLE + ["--image", "{tmp}/no_image.png"], "no_image.png"),
    # info
    (["info", "{tmp}/no_model"], "no_model"),
    (["info", "{corrupt}"], "diffusion_pytorch_model.safetensors"),
    (["info", "{tmp}"], "model_index.json"),
    # eval
    (EVAL + ["--fake", "{tmp}/no_model"], "no_model"),
    (EVAL + ["--fake", "{corrupt}"], "diffusion_pytorch_model.safetensors"),
    (EVAL + ["--real", "{tmp}/no_videos_here"], "no_videos_here"),
    (EVAL + ["--num-videos", "0"], "--num-videos"),
    (EVAL + ["--num-frames", "0"], "--num-frames"),
    (EVAL + ["--batch-size", "-1"], "--batch-size"),
    (EVAL + ["--guidance", "nan"], "finite"),
    (EVAL + ["--residual-guidance", "inf"], "finite"),
    (EVAL + ["--steps", "0"], "steps"),
    (EVAL + ["--seed", "-1"], "seed"),
    (EVAL + ["--metrics", "bogus"], "bogus"),
    (EVAL + ["--out", "{tmp}/a_dir"], "a_dir"),
    (EVAL + ["--device", "tpu"], "--device"),
    (EVAL + ["--dtype", "fp64"], "--dtype"),
    # bench
    (BENCH + ["--frames", "0"], "frames"),
    (BENCH + ["--steps", "-1"], "steps"),
    (BENCH + ["--resolutions", "0"], "resolution"),
    (BENCH + ["--threads", "0"], "threads"),
    (BENCH + ["--repeats", "0"], "repeats"),
    (BENCH + ["--out", "{tmp}/a_dir"], "a_dir"),
    (BENCH + ["--markdown", "{tmp}/a_file/x.md"], "a_file"),
    # data render-dmc
    (DMC + ["--clips", "0"], "clips"),
    (DMC + ["--frames", "-1"], "frames"),
    (DMC + ["--size", "0"], "size"),
    (DMC + ["--workers", "0"], "workers"),
    (DMC + ["--fps", "0"], "fps"),
    (DMC + ["--frame-interval", "nan"], "finite"),
    (DMC + ["--out", "{tmp}/a_file"], "a_file"),
    # data cache-latents
    (CACHE + ["--frames", "1"], "frames"),
    (CACHE + ["--vae-slice", "0"], "vae_slice"),
    (CACHE + ["--num-workers", "-1"], "num_workers"),
    (CACHE, "no_vae"),
    (CACHE + ["--out", "{tmp}/a_file"], "a_file"),
    (CACHE[:-4] + ["--out", "{tmp}/cache"], "latent_cache needs vae"),
    (CACHE[:-2], "no cache folder"),
    # train-vae
    (VAE + ["--lr", "nan"], "finite"),
    (VAE + ["--steps", "0"], "steps"),
    (VAE + ["--resolution", "-16"], "resolution"),
    (VAE + ["--batch-size", "0"], "batch"),
    (VAE + ["--kl-weight", "inf"], "finite"),
    (VAE + ["--out", "{tmp}/a_file"], "a_file"),
]
if not torch.cuda.is_available():  # CUDA asked for where there is none
    CASES += [(SAMPLE + ["--device", "cuda"], "CUDA is not available"),
              (EVAL + ["--device", "cuda:0"], "CUDA is not available")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    model = root / "model"
    VideoFusionPipeline(residual=tiny_residual(num_classes=10), base=tiny_base(num_classes=10),
                        scheduler=DDIMScheduler(), sample_size=8).save_pretrained(model)
    corrupt = root / "corrupt"
    shutil.copytree(model, corrupt)
    weights = corrupt / "residual" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    return {"model": model, "corrupt": corrupt}


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][-2:]) for c in CASES])
def test_bad_input_exits_2_with_one_line(argv, message, folders, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "bad.yaml").write_text("frames: [4\n")
    (tmp_path / "no_videos_here").mkdir()
    (tmp_path / "taken" / "video_000.mp4").mkdir(parents=True)
    (tmp_path / "a_dir").mkdir()
    argv = [a.format(tmp=tmp_path, **folders) for a in argv]
    capsys.readouterr()

    def hang(*_):
        raise TimeoutError(f"no error within 60 s: the work started for {argv}")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, (code, err)
    assert len(lines) == 1 and lines[0].startswith("videofusion: error: "), err
    assert message in lines[0], lines[0]


def test_the_table_covers_every_command_and_forty_cases():
    assert len(CASES) >= 40
    commands = {argv[0] for argv, _ in CASES}
    assert commands == {"train", "train-vae", "sample", "info", "eval", "bench", "data"}


def number_options():
    """(command argv, option, kind) for every option of every command that takes a number."""
    import argparse

    from videofusion.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*prefix, name])
            elif action.option_strings and action.type is not None:
                kind = getattr(action.type, "__name__", "")
                if kind in ("int", "float", "finite_float"):
                    yield prefix, action.option_strings[-1], "float" if "float" in kind else kind

    return list(walk(build_parser(), []))


BASES = {"train": TRAIN, "sample": SAMPLE, "eval": EVAL, "bench": BENCH,
         "data render-dmc": DMC, "data cache-latents": CACHE, "train-vae": VAE,
         "studio": ["studio"]}
FUZZ = [(" ".join(command), option, value)
        for command, option, kind in number_options()
        for value in (("x", "nan", "inf", "-inf", "1e400") if kind == "float" else
                      ("x", "1.5", "nan", "1e3"))]


@pytest.mark.parametrize("command, option, value", FUZZ)
def test_every_number_option_refuses_non_numbers_and_non_finite_values(
        command, option, value, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, model=tmp_path, corrupt=tmp_path) for a in BASES[command]]
    with pytest.raises(SystemExit) as stop:
        main([*argv, f"{option}={value}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert option in lines[0], lines[0]


def test_the_fuzz_reaches_every_command_with_numbers():
    assert {command for command, _, _ in FUZZ} == set(BASES)
    assert len({(c, o) for c, o, _ in FUZZ}) >= 60
