"""``videofusion studio``: the method in a browser (Gradio, ``pip install videofusion[studio]``).

A thin page over the pipeline's public stages (``plan`` -> ``prepare_latents`` -> ``denoise`` ->
``decode``) and ``long_video.iter_long_video``. What only this method can show: content (the base
noise, drawn from the content seed) and motion (the residual noise, from the motion seed) are
separate, so locking one seed and rerolling the other is "same content, new motion" or the
reverse; and the decomposition of each sample (``videofusion.decomposition``).

One generation runs at a time (a Gradio queue with one worker), so users share the CPU cores
instead of oversubscribing them. Bad input is one line in the page (``Studio.generate`` never
raises); generated files live in a temporary folder that is removed when the server stops.
``add_studio_parser`` / ``run_studio`` plug it into the CLI; ``python -m videofusion.studio``
runs it alone.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .allocator import keep_freed_memory
from .assets import SHIPPED_MODELS, ShippedModel, installed_models
from .choices import DEFAULT_INFERENCE_STEPS, SCHEDULERS
from .class_names import class_index, folder_configs, resolve_class_names
from .safety import int_range

# Bounds of the page's inputs: what keeps one CPU server answering, not what the model could do.
LIMITS = {"frames": (2, 64), "steps": (1, 200), "guidance": (0.0, 20.0), "lambda": (0.0, 1.0),
          "seed": (0, 2 ** 32 - 1), "long_frames": (0, 512)}
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
PROGRESS_SECONDS = 0.5  # the page's progress bar moves at most this often
OWN_SAMPLER = "model's own"
SAMPLERS = (OWN_SAMPLER, *SCHEDULERS)
NO_CLASS = "none"
DECOMPOSITION_HELP = """
**The decomposition.** VideoFusion writes every frame as the key frame plus a residual,
x<sup>i</sup> = sqrt(&lambda;<sup>i</sup>) x<sup>k</sup> + sqrt(1 - &lambda;<sup>i</sup>)
dx<sup>i</sup>. The *key frame* (frame k = N // 2) is the one whose noise is all base noise: the
base generator drew it, and it depends on the content seed only (locking content keeps it
pixel for pixel). The table splits each frame the same way: its *base part*
sqrt(&lambda;<sup>i</sup>) x<sup>k</sup> and its *residual part*, the rest; *base share* is the
base part's energy over both (pixels in [-1, 1]). A frame equal to the key frame scores 0.85 at
&lambda; = 0.5, not 1, because the formula leaves (1 - sqrt(&lambda;)) x<sup>k</sup> to the
residual, so *difference* (mean absolute change from the key frame, pixels in [0, 1]) and the
difference maps show plainly what the residual generator moved. docs/studio.md has more.
"""


def shipped_models(models: dict[str, ShippedModel] | None = None) -> dict[str, Path]:
    """The page's names and folders of the shipped models that are installed."""
    return {f"{m.title} (shipped)": m.folder for m in installed_models(models).values()}


def example_prompt(folder: Path) -> str:
    """A caption of the data the model in ``folder`` was trained on, if it is a shipped one."""
    captions = [m.example_caption for m in SHIPPED_MODELS.values() if m.folder == folder]
    return captions[0] if captions and captions[0] else "a caption like the training data's"


class Cancelled(Exception):
    """Raised from the denoising hook when the user presses Cancel."""


@dataclass
class Request:
    """One generation as the page asks for it; ``check`` refuses what is out of bounds."""

    model: str
    class_label: str = NO_CLASS  # a class name (or index), or NO_CLASS
    prompt: str = ""
    frames: float = 16
    sampler: str = OWN_SAMPLER
    steps: float = DEFAULT_INFERENCE_STEPS
    guidance: float | str | None = None  # None or "": the model's own
    lambda_: float | str | None = None
    content_seed: float = 0
    motion_seed: float = 1
    image: str | None = None  # path of an uploaded key frame
    long_frames: float = 0  # 0: one clip; more: a long video of that many frames

    def check(self, models: dict[str, Path]) -> Request:
        if self.model not in models:
            raise ValueError(f"unknown model {self.model!r}; choose one of {list(models)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        self.frames = _bounded("frames", self.frames, integer=True)
        self.steps = _bounded("steps", self.steps, integer=True)
        self.content_seed = _bounded("seed", self.content_seed, integer=True, name="content seed")
        self.motion_seed = _bounded("seed", self.motion_seed, integer=True, name="motion seed")
        self.long_frames = _bounded("long_frames", self.long_frames or 0, integer=True,
                                    name="long-video length")
        if self.guidance is not None and str(self.guidance).strip():
            self.guidance = _bounded("guidance", self.guidance)
        else:
            self.guidance = None
        if self.lambda_ is not None and str(self.lambda_).strip():
            self.lambda_ = _bounded("lambda", self.lambda_, name="λ")
        else:
            self.lambda_ = None
        if self.long_frames and self.long_frames <= self.frames:
            raise ValueError(f"long-video length must be 0 (off) or more than the clip's "
                             f"{self.frames} frames, got {self.long_frames}")
        if self.long_frames and self.image:
            raise ValueError("a long video cannot start from an uploaded key frame: clear one")
        if self.image:
            check_upload(self.image)
        return self


def _bounded(key: str, value, integer: bool = False, name: str | None = None):
    low, high = LIMITS[key]
    name = name or key
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:  # also refuses nan
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value}")
        return int(number)
    return number


def check_upload(path: str) -> None:
    """Refuse an upload that is too large or not an image, in one line."""
    size = Path(path).stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the uploaded file is {size / 1e6:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES / 1e6:.1f} MB")
    from .pipeline import read_image

    try:
        read_image(path)
    except ValueError:
        raise ValueError("the uploaded file is not an image Pillow can read (PNG, JPEG, ...)") \
            from None


@dataclass
class Result:
    """One generation's files and figures; ``message`` says what happened, in one line."""

    message: str
    video: Path | None = None
    sheet: Path | None = None
    key_frame: Path | None = None
    difference_maps: Path | None = None
    table: list | None = None
    content_seed: int | None = None
    motion_seed: int | None = None
    seconds: float = 0.0


class Studio:
    """The models, the output folder and the one running generation behind the page."""

    def __init__(self, models: dict[str, Path], workdir: str | Path):
        self.models = dict(models)
        self.workdir = Path(workdir)
        self._pipelines: dict = {}
        self._cancel = threading.Event()
        self._loading = threading.Lock()
        # every generation and the warm-up run on this one thread: torch's OpenMP pool belongs
        # to the thread that calls it, and sampling on a fresh thread per request (Gradio's
        # workers) took 1.4x as long on 2 cores; one worker is also the queue
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-sampler")
        self._runs = 0
        self._ready = threading.Event()  # set once the warm-up has run (or failed)

    def pipeline(self, name: str):
        """The pipeline of model ``name``, loaded once (a second caller waits for the first);
        its own scheduler kept aside, since ``use_scheduler`` replaces it."""
        with self._loading:
            if name not in self._pipelines:
                from .pipeline import load_pipeline

                pipe = load_pipeline(self.models[name])
                self._pipelines[name] = (pipe, pipe.scheduler)
        return self._pipelines[name][0]

    def defaults(self, name: str) -> dict:
        """What the page offers for model ``name``, read from its folder's JSON files without
        loading it (the page comes up before torch and diffusers are imported): its classes
        by name (``class_names``; their indices where the folder recorded none). Guidance and
        lambda stay empty: the pipeline's own (``default_guidance``, ``default_lambda``); the
        step count is the folder's (``default_inference_steps``, for its own sampler)."""
        folder = self.models[name]
        index, residual = folder_configs(folder)
        names = resolve_class_names(index.get("class_names"), residual.get("num_classes"))
        classes = [NO_CLASS] + (names or [])
        return {"classes": classes, "class_label": classes[min(1, len(classes) - 1)],
                "text": residual.get("cross_attention_dim") is not None,
                "example": example_prompt(folder),
                "size": index.get("sample_size"),
                "steps": index.get("default_inference_steps") or DEFAULT_INFERENCE_STEPS}

    def warm_up(self) -> None:
        """Load the first model and run it once (two frames, one step), so the first click
        pays neither the imports nor the text encoder's loading."""
        name = next(iter(self.models))
        try:
            self.generate(Request(name, self.defaults(name)["class_label"], frames=2, steps=1),
                          keep=False)
        finally:  # a failed warm-up shows its error at the first click instead
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the warm-up is over, waiting for it up to ``timeout`` seconds (None: until
        it is): the page enables Generate then."""
        return self._ready.wait(timeout)

    def cancel(self) -> None:
        """Stop the running generation at its next denoising step (or clip)."""
        self._cancel.set()

    def generate(self, request: Request,
                 on_step: Callable[[int, int, str], None] | None = None,
                 keep: bool = True) -> Result:
        """Run ``request`` on the studio's sampling thread, waiting for any generation before
        it; any failure comes back as ``Result.message``, never raised. ``keep=False`` writes no
        files."""
        context = contextvars.copy_context()  # Gradio's progress bar reads the request's
        return self._worker.submit(context.run, self._guarded, request, on_step, keep).result()

    def close(self) -> None:
        """Cancel the running generation and drop the waiting ones."""
        self.cancel()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, request: Request, on_step, keep: bool) -> Result:
        self._cancel.clear()
        start = time.perf_counter()
        try:
            result = self._generate(request.check(self.models), on_step or (lambda *a: None),
                                    keep)
        except Cancelled:
            return Result("Cancelled.")
        except (ValueError, FileNotFoundError) as err:
            return Result(f"Error: {one_line(err)}")
        except Exception as err:  # the page shows one line, the server log the rest
            traceback.print_exc()
            return Result(f"Error: generation failed ({type(err).__name__}: {one_line(err)})")
        result.seconds = time.perf_counter() - start
        result.message += f" in {result.seconds:.1f} s."
        return result

    def _generate(self, request: Request, on_step, keep: bool) -> Result:
        import numpy as np
        import torch

        from .decomposition import decompose
        from .long_video import iter_long_video, num_clips
        from .noise import seeded_draw
        from .pipeline import read_image
        from .video_io import contact_sheet, to_uint8, upscale, write_mp4

        pipe = self.pipeline(request.model)
        pipe.scheduler = self._pipelines[request.model][1]
        pipe.use_scheduler(None if request.sampler == OWN_SAMPLER else request.sampler)
        guidance = pipe.default_guidance if request.guidance is None else request.guidance
        labels = (None if request.class_label in (NO_CLASS, None, "")
                  else class_index(request.class_label, pipe.class_names, "class"))
        prompt = request.prompt.strip() or None if request.prompt else None
        image = read_image(request.image) if request.image else None
        clip_frames = request.frames
        plan = pipe.plan(prompt, labels, num_frames=clip_frames,
                         num_inference_steps=request.steps, guidance_scale=guidance,
                         lambda_=request.lambda_, image=image)
        _, channels, _, h, w = plan.latent_shape
        base = seeded_draw((channels, h, w), request.content_seed)
        motion = torch.Generator().manual_seed(request.motion_seed)

        def check_cancel(done: int, total: int, what: str) -> None:
            if self._cancel.is_set():
                raise Cancelled
            on_step(done, total, what)

        if request.long_frames:  # progress and cancel per clip: iter_long_video owns the steps
            overlap = min(4, clip_frames // 2)
            total = num_clips(request.long_frames, clip_frames, overlap)
            clips = []
            check_cancel(0, total, "clips")
            for clip in iter_long_video(
                    pipe, request.long_frames, clip_frames, overlap, prompt=prompt,
                    class_labels=labels, num_inference_steps=request.steps,
                    guidance_scale=guidance, lambda_=request.lambda_, generator=motion,
                    base_noise=base, progress=False):
                clips.append(clip[0])
                check_cancel(len(clips), total, "clips")
            video = np.concatenate(clips)
        else:
            residual = seeded_draw(plan.latent_shape[1:], request.motion_seed)
            latents, fresh = pipe.prepare_latents(plan, motion, base, residual)

            def before_step(i: int, z):
                check_cancel(i, request.steps, "denoising steps")
                return z

            with torch.no_grad():
                latents = pipe.denoise(plan, latents, fresh, before_step=before_step,
                                       progress=False)
                video = pipe.postprocess(pipe.decode(latents), "np")[0]
        parts = decompose(video[:clip_frames], plan.lambdas.numpy())
        what = (f"{len(video)} frames" if not request.long_frames
                else f"a long video of {len(video)} frames")
        message = (f"Generated {what} at {pipe.config.sample_size} px (content seed "
                   f"{request.content_seed}, motion seed {request.motion_seed}, guidance "
                   f"{guidance:g}, λ {plan.lambdas.min().item():g}"
                   + (f", reconstruction guidance {plan.reconstruction_guidance_scale:g}"
                      if plan.reconstruction_guidance_scale else "")
                   + (f", colour anchoring {plan.colour_anchoring:g}"
                      if plan.colour_anchoring else "") + ")")
        if not keep:
            return Result(message)
        self._runs += 1
        out = self.workdir / f"run_{self._runs:05d}"
        scale = max(1, 128 // pipe.config.sample_size)
        write_mp4(video, out / "video.mp4", pipe.config.fps, scale)
        contact_sheet(video[None], out / "contact_sheet.png", scale=max(1, scale // 2))
        from PIL import Image

        key = out / "key_frame.png"
        Image.fromarray(upscale(to_uint8(parts.key_frame), scale)).save(key)
        maps = contact_sheet(parts.difference_maps[None], out / "difference_maps.png",
                             scale=max(1, scale // 2))
        return Result(message, out / "video.mp4", out / "contact_sheet.png", key, maps,
                      parts.rows(), request.content_seed, request.motion_seed)


def at_most_every(seconds: float, callback: Callable[[int, int, str], None],
                  clock: Callable[[], float] = time.monotonic) -> Callable[[int, int, str], None]:
    """``callback(done, total, what)`` passed on at most once per ``seconds``, the first call
    and the one with ``done == total`` always: each update is a message to the page and a
    redraw there, on the cores the sampler needs (an update per step cost about 0.9 s of a
    4-5 s click in the browser, docs/studio.md)."""
    last = -float("inf")

    def call(done: int, total: int, what: str) -> None:
        nonlocal last
        now = clock()
        if done < total and now - last < seconds:
            return
        last = now
        callback(done, total, what)

    return call


def one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def new_seed() -> int:
    return random.randint(0, LIMITS["seed"][1])


# ---- the page -------------------------------------------------------------------------------

LOADING = "Loading the model…"


def build_app(studio: Studio):
    """The Gradio page over ``studio``: inputs left, video and decomposition right."""
    import gradio as gr

    first = next(iter(studio.models))
    d = studio.defaults(first)
    low, high = LIMITS["frames"]
    with gr.Blocks(title="VideoFusion studio", analytics_enabled=False,
                   delete_cache=(600, 3600)) as app:
        gr.Markdown("# VideoFusion studio\nDecomposed diffusion (Luo et al., CVPR 2023): each "
                    "frame's noise is a **base noise** shared by the clip (the *content*) plus a "
                    "**residual noise** of its own (the *motion*). Lock one seed and generate "
                    "again to keep that part and reroll the other.")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(list(studio.models), value=first, label="Model",
                                    elem_id="model")
                prompt = gr.Textbox(label="Prompt", visible=d["text"], elem_id="prompt",
                                    placeholder=d["example"])
                class_label = gr.Dropdown(d["classes"], value=d["class_label"], label="Class",
                                          elem_id="class_label")
                with gr.Row():
                    content_seed = gr.Number(0, label="Content seed (base noise)", precision=0,
                                             elem_id="content_seed")
                    content_lock = gr.Checkbox(True, label="Lock content", elem_id="content_lock")
                with gr.Row():
                    motion_seed = gr.Number(1, label="Motion seed (residual noise)",
                                            precision=0, elem_id="motion_seed")
                    motion_lock = gr.Checkbox(False, label="Lock motion", elem_id="motion_lock")
                with gr.Row():
                    # enabled once the model has loaded and run: a click never waits for it
                    generate = gr.Button(LOADING, variant="primary", elem_id="generate",
                                         interactive=False)
                    cancel = gr.Button("Cancel", elem_id="cancel")
                with gr.Accordion("Sampling", open=True):
                    frames = gr.Number(16, label=f"Frames ({low}-{high})", elem_id="frames")
                    sampler = gr.Dropdown(list(SAMPLERS), value=OWN_SAMPLER, label="Sampler",
                                          elem_id="sampler")
                    steps = gr.Number(d["steps"], label="Steps", elem_id="steps")
                    # text, not numbers: an empty Number reads as 0, and empty means the model's
                    guidance = gr.Textbox("", label="Guidance", elem_id="guidance",
                                          placeholder="the model's own")
                    lambda_ = gr.Textbox("", elem_id="lambda", placeholder="the model's own",
                                         label="λ, share of the noise shared by the clip, 0-1")
                    long_frames = gr.Number(0, label="Long video: total frames (0 = one clip)",
                                            elem_id="long_frames")
                image = gr.File(label="Image-to-video: key frame (optional, ≤ 10 MB)",
                                file_types=["image"], type="filepath", elem_id="image")
            with gr.Column(scale=2):
                status = gr.Markdown("Pick a class or a prompt and press Generate.",
                                     elem_id="status")
                with gr.Row():
                    video = gr.Video(label="Video", autoplay=True, loop=True, elem_id="video",
                                     interactive=False, height=320, scale=2)
                    key_frame = gr.Image(label="Key frame (drawn by the base generator)",
                                         elem_id="key_frame", interactive=False, height=320,
                                         scale=1)
                sheet = gr.Image(label="Contact sheet (every frame)", elem_id="sheet",
                                 interactive=False)
                maps = gr.Image(label="Difference from the key frame, per frame",
                                elem_id="difference_maps", interactive=False)
                table = gr.Dataframe(
                    headers=["frame", "λ", "base share", "residual share", "difference"],
                    label="Decomposition per frame", elem_id="decomposition",
                    interactive=False)
                gr.Markdown(DECOMPOSITION_HELP)

        def on_model(name):
            try:
                d = studio.defaults(name)
            except ValueError as err:
                return gr.update(), gr.update(), gr.update(), f"Error: {one_line(err)}"
            return (gr.update(choices=d["classes"], value=d["class_label"]),
                    gr.update(visible=d["text"], placeholder=d["example"]),
                    gr.update(value=d["steps"]), f"Model: {name}")

        model.change(on_model, model, [class_label, prompt, steps, status])

        def when_ready():
            studio.wait_ready()
            return gr.update(value="Generate", interactive=True)

        app.load(when_ready, None, generate, concurrency_limit=None, show_progress="hidden")

        def run(model, prompt, class_label, frames, sampler, steps, guidance, lambda_,
                content_seed, content_lock, motion_seed, motion_lock, image, long_frames,
                progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for a bar)
            content_seed = content_seed if content_lock else new_seed()
            motion_seed = motion_seed if motion_lock else new_seed()
            request = Request(model, class_label, prompt or "", frames, sampler, steps,
                              guidance=guidance, lambda_=lambda_, content_seed=content_seed,
                              motion_seed=motion_seed, image=image, long_frames=long_frames)
            result = studio.generate(request, at_most_every(
                PROGRESS_SECONDS, lambda done, total, what: progress((done, total), unit=what)))
            if result.video is None:
                return (gr.update(),) * 5 + (result.message, content_seed, motion_seed)
            return (str(result.video), str(result.sheet), str(result.key_frame),
                    str(result.difference_maps), result.table, result.message,
                    result.content_seed, result.motion_seed)

        generate.click(
            run, [model, prompt, class_label, frames, sampler, steps, guidance, lambda_,
                  content_seed, content_lock, motion_seed, motion_lock, image, long_frames],
            [video, sheet, key_frame, maps, table, status, content_seed, motion_seed],
            concurrency_limit=1, concurrency_id="generate",
            show_progress_on=[video])  # the bar on the video; the status line changes once
        # its own worker, so it runs beside a generation; no output, since the generation's own
        # "Cancelled." could arrive first and be overwritten
        cancel.click(studio.cancel, None, None)
    return app


# ---- the command ----------------------------------------------------------------------------

def add_studio_parser(subparsers) -> argparse.ArgumentParser:
    """``videofusion studio``: the browser studio, on loopback unless told otherwise."""
    p = subparsers.add_parser(
        "studio", help="generate in the browser (needs pip install 'videofusion[studio]')",
        description="A Gradio page: generate with the shipped models or your own, lock the "
                    "content or the motion seed and reroll the other, see the decomposition "
                    "(docs/studio.md). Serves on 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--model-dir", action="append", default=[], metavar="PATH",
                   help="a VideoFusionPipeline folder to offer beside the shipped models "
                        "(repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=7860,
                   help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (off unless asked for)")
    p.set_defaults(handler=run_studio)
    return p


def run_studio(args: argparse.Namespace) -> int:
    """Serve the studio until interrupted; the output folder goes with it."""
    models = shipped_models()
    for folder in args.model_dir:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        models[folder.name if folder.name not in models else str(folder)] = folder
    if not models:
        raise ValueError("no model to offer: no shipped model is installed; pass --model-dir")
    workdir = Path(tempfile.mkdtemp(prefix="videofusion-studio-"))
    studio = None
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up as Ctrl+C does
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")  # uploads and served copies
    try:
        try:
            import gradio
        except ImportError:
            raise ValueError("the studio needs Gradio: pip install 'videofusion[studio]'") \
                from None
        studio = Studio(models, workdir / "runs")
        app = build_app(studio)
        app.queue(default_concurrency_limit=1)
        theme = gradio.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                      font_mono=["ui-monospace", "monospace"])  # offline

        port = args.port or free_port(args.host)
        print(f"videofusion studio: http://{args.host}:{port} (Ctrl+C stops it)", flush=True)
        app.launch(server_name=args.host, server_port=port, share=args.share,
                   max_file_size=MAX_UPLOAD_BYTES, show_error=False, quiet=True,
                   inbrowser=False, ssr_mode=False, theme=theme, prevent_thread_lock=True)
        studio.warm_up()  # the page is up; a click meanwhile waits for the model
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        if studio is not None:
            studio.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videofusion")
    add_studio_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["studio", *(sys.argv[1:] if argv is None else argv)])
    keep_freed_memory()  # as `videofusion studio`: the server's process samples
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"videofusion: error: {one_line(err)}\n")


if __name__ == "__main__":
    sys.exit(main())
