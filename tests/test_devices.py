"""--device and --dtype: every draw made where its generator lives, then moved (one seed, one
video on any device); fp16/bf16 networks under autocast stay close to fp32; bad names are one
line and exit 2 (tests/test_bad_input.py has the table)."""

import pytest
import torch
from conftest import tiny_base, tiny_residual
from diffusers import DDIMScheduler, DDPMScheduler

from videofusion.cli import main
from videofusion.devices import device_name, resolve_device, resolve_dtype
from videofusion.noise import FreshNoise, decomposed_noise, make_lambdas
from videofusion.pipeline import VideoFusionPipeline
from videofusion.sampling import draw

pytestmark = pytest.mark.usefixtures("one_thread")

# measured on this tiny model (DDPM, 5 steps, guidance 2, 4 frames of 8x8): bf16 differs from
# fp32 by at most 0.05 per pixel in [0, 1] (mean 0.0023); fp16 by 0.005 (mean 0.0003)
TOLERANCE = {"bf16": (0.1, 0.01), "fp16": (0.02, 0.002)}  # (max, mean)


def tiny_pipeline(scheduler=None):
    return VideoFusionPipeline(residual=tiny_residual(num_classes=10),
                               base=tiny_base(num_classes=10),
                               scheduler=scheduler or DDPMScheduler(), sample_size=8)


@pytest.fixture
def draws(monkeypatch):
    """Every ``torch.randn`` / ``torch.randn_like`` call while the test runs: (generator's
    device, requested device), ``None`` where not given. diffusers' ``randn_tensor`` draws
    through ``torch.randn``, so its draws are recorded too."""
    calls = []
    randn, randn_like = torch.randn, torch.randn_like

    def recording_randn(*args, generator=None, device=None, **kwargs):
        calls.append(("randn", None if generator is None else generator.device,
                      None if device is None else torch.device(device)))
        return randn(*args, generator=generator, device=device, **kwargs)

    def recording_randn_like(*args, **kwargs):
        calls.append(("randn_like", kwargs.get("generator"), kwargs.get("device")))
        return randn_like(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", recording_randn)
    monkeypatch.setattr(torch, "randn_like", recording_randn_like)
    return calls


@pytest.mark.parametrize("scheduler", [DDPMScheduler(), DDIMScheduler()], ids=["ddpm", "ddim"])
def test_every_draw_of_a_sampling_run_is_made_on_its_generators_device(draws, scheduler):
    pipe = tiny_pipeline(scheduler)
    pipe(class_labels=[1, 2], num_frames=4, num_inference_steps=3, eta=1.0,
         generator=torch.Generator().manual_seed(0), progress=False)
    assert len(draws) >= 2 * 3  # z_T's base and residual, then fresh noise at every step
    assert all(kind == "randn" for kind, _, _ in draws), draws  # no draw from the global RNG
    for _, source, target in draws:
        assert source is not None, "a draw without a generator"
        assert target in (None, source), draws


def test_a_cpu_generator_serves_another_device_and_the_noise_is_moved(draws):
    """The bug this guards against: ``torch.randn(generator=cpu, device="cuda")`` is refused by
    torch. The ``meta`` device stands in for a GPU: a draw asked for there must be made on the
    CPU and moved."""
    generator = torch.Generator().manual_seed(0)
    lambdas = make_lambdas(4, 0.5)
    noise = decomposed_noise((2, 3, 4, 8, 8), lambdas, generator, device="meta",
                             return_parts=True)
    assert all(part.device.type == "meta" for part in noise)
    fresh = draw(FreshNoise(lambdas, generator), torch.empty(2, 3, 4, 8, 8, device="meta"))
    assert fresh.device.type == "meta"
    assert draws and all(source == target == torch.device("cpu") or target is None
                         for _, source, target in draws), draws
    same = decomposed_noise((2, 3, 4, 8, 8), lambdas, torch.Generator().manual_seed(0))
    again = decomposed_noise((2, 3, 4, 8, 8), lambdas, torch.Generator().manual_seed(0),
                             device="cpu")
    assert torch.equal(same, again)  # where it goes does not change the draw


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_networks_stay_close_to_fp32_and_latents_stay_fp32(dtype):
    pipe = tiny_pipeline()
    run = dict(class_labels=[1, 2], num_frames=4, num_inference_steps=5, guidance_scale=2.0,
               progress=False)
    full = pipe(**run, generator=torch.Generator().manual_seed(0)).frames
    half = pipe(**run, generator=torch.Generator().manual_seed(0), dtype=dtype).frames
    latent = pipe(**run, generator=torch.Generator().manual_seed(0), dtype=dtype,
                  output_type="latent").frames
    assert latent.dtype == torch.float32
    assert pipe.residual.dtype == torch.float32  # autocast: the weights are not cast
    worst, mean = TOLERANCE[dtype]
    difference = abs(half - full)
    assert 0 < difference.max() <= worst and difference.mean() <= mean


def test_cli_sample_runs_in_bf16_on_the_cpu(tmp_path):
    model = tmp_path / "model"
    tiny_pipeline().save_pretrained(model)
    code = main(["sample", "--model-dir", str(model), "--frames", "4", "--steps", "2",
                 "--class-label", "1", "--num-videos", "1", "--device", "cpu", "--dtype",
                 "bf16", "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "video_000.mp4").is_file()


def test_device_and_dtype_names():
    assert [device_name(n) for n in ("auto", "cpu", "cuda", "cuda:1")] == [
        "auto", "cpu", "cuda", "cuda:1"]
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", ""):
        with pytest.raises(ValueError, match="device must be one of"):
            device_name(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is torch.float32
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype(torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_one_seed_gives_the_same_video_on_the_cpu_and_the_gpu(dtype):
    run = dict(class_labels=[1, 2], num_frames=4, num_inference_steps=5, guidance_scale=2.0,
               eta=1.0, progress=False)
    cpu = tiny_pipeline(DDIMScheduler())(**run, generator=torch.Generator().manual_seed(0)).frames
    gpu = tiny_pipeline(DDIMScheduler()).to("cuda")(
        **run, generator=torch.Generator().manual_seed(0), dtype=dtype).frames
    worst, mean = TOLERANCE.get(dtype, (1e-3, 1e-4))
    assert abs(gpu - cpu).max() <= worst and abs(gpu - cpu).mean() <= mean
