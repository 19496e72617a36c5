"""Rendered physics videos: DeepMind Control Suite scenes as a folder of captioned mp4 clips.

``render_dmc`` writes ``OUT/<domain>/clip_NNNNN.mp4`` plus a caption sidecar ``clip_NNNNN.txt``,
i.e. the one-folder-per-class layout that :class:`~videofusion.data.VideoFolder` reads with a
class label per domain. The bodies are driven by scripted policies (smoothed random actions, or
a sinusoidal gait for legged bodies), not by trained agents: the captions name the task, the
motion is physically plausible but not necessarily successful.

Every clip is a pure function of ``(seed, domain-task, clip index)``, so a killed run resumes by
skipping clips whose mp4 exists (files are written under a hidden temporary name and renamed).
dm-control (``pip install 'videofusion[dmc]'``) and a headless OpenGL (EGL or OSMesa) are needed;
neither is imported until rendering starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from videofusion.choices import DMC_POLICIES as POLICIES
from videofusion.video_io import write_mp4

DEFAULT_DOMAINS = ("cheetah", "walker", "hopper", "cartpole", "reacher", "finger")
# The task rendered when a domain is named without one ("walker" = "walker-walk").
DEFAULT_TASKS = {
    "acrobot": "swingup", "ball_in_cup": "catch", "cartpole": "swingup", "cheetah": "run",
    "finger": "spin", "fish": "swim", "hopper": "hop", "humanoid": "walk",
    "manipulator": "bring_ball", "pendulum": "swingup", "point_mass": "easy",
    "quadruped": "walk", "reacher": "easy", "swimmer": "swimmer6", "walker": "walk",
}
CAPTIONS = {
    "acrobot-swingup": "an acrobot swinging up",
    "ball_in_cup-catch": "a cup catching a ball on a string",
    "cartpole-balance": "a cart balancing a pole",
    "cartpole-swingup": "a cart swinging up a pole",
    "cheetah-run": "a cheetah running",
    "finger-spin": "a robotic finger spinning a wheel",
    "finger-turn_easy": "a robotic finger turning a dial",
    "finger-turn_hard": "a robotic finger turning a dial",
    "fish-swim": "a fish swimming",
    "fish-upright": "a fish turning upright",
    "hopper-hop": "a hopper hopping",
    "hopper-stand": "a hopper standing up",
    "humanoid-run": "a humanoid running",
    "humanoid-stand": "a humanoid standing up",
    "humanoid-walk": "a humanoid walking",
    "manipulator-bring_ball": "a robot arm bringing a ball",
    "pendulum-swingup": "a pendulum swinging up",
    "point_mass-easy": "a point mass moving to a target",
    "quadruped-run": "a quadruped running",
    "quadruped-walk": "a quadruped walking",
    "reacher-easy": "a robot arm reaching for a target",
    "reacher-hard": "a robot arm reaching for a target",
    "swimmer-swimmer6": "a swimmer swimming",
    "walker-run": "a walker running",
    "walker-stand": "a walker standing up",
    "walker-walk": "a walker walking",
}
# Bodies that move more like their task under a periodic gait than under smoothed noise.
GAIT_DOMAINS = frozenset({"cheetah", "walker", "hopper", "quadruped", "humanoid", "swimmer",
                          "fish"})
RENDERERS = ("egl", "osmesa")
INSTALL_HINT = "pip install 'videofusion[dmc]'"
RENDERER_HINT = "on Debian/Ubuntu: apt-get install libegl1 libosmesa6 libgl1"
# Clips rendered per environment load: loading a scene and creating its GL context costs about
# as much as rendering 30-50 frames at 64 px.
CLIPS_PER_LOAD = 32
# Renders one small frame: proves dm-control, mujoco and the OpenGL backend work together.
_PROBE = (
    "from dm_control import mujoco\n"
    "p = mujoco.Physics.from_xml_string("
    "'<mujoco><worldbody><light/><geom size=\"0.1\"/></worldbody></mujoco>')\n"
    "assert p.render(8, 8).shape == (8, 8, 3)\n"
    "p.free()\n"
)


class DmcUnavailable(RuntimeError):
    """dm-control, a compatible mujoco or a headless OpenGL renderer is missing."""


@dataclass(frozen=True)
class DomainTask:
    """One Control Suite task and where its clips go."""

    domain: str
    task: str

    @property
    def name(self) -> str:
        return f"{self.domain}-{self.task}"

    @property
    def folder(self) -> str:
        """The domain alone for its default task (the class name), else ``domain-task``."""
        return self.domain if DEFAULT_TASKS.get(self.domain) == self.task else self.name

    @property
    def caption(self) -> str:
        words = f"a {self.domain} doing the {self.task} task".replace("_", " ")
        return CAPTIONS.get(self.name, words)


@dataclass(frozen=True)
class RenderSummary:
    """What a ``render_dmc`` call did."""

    out: Path
    renderer: str
    rendered: int
    skipped: int
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    """Clips of one task, rendered with one environment load (picklable for worker processes)."""

    spec: DomainTask
    clips: tuple[int, ...]
    frames: int
    size: int
    out: Path
    seed: int
    camera: int | str
    policy: str
    frame_interval: float
    fps: int


def parse_domains(domains: Sequence[str], available: Sequence[tuple[str, str]]) -> list[DomainTask]:
    """``"walker"`` or ``"walker-run"`` entries -> tasks, checked against the suite's list."""
    tasks_by_domain: dict[str, list[str]] = {}
    for domain, task in available:
        tasks_by_domain.setdefault(domain, []).append(task)
    specs = []
    for entry in domains:
        domain, _, task = entry.strip().partition("-")
        if domain not in tasks_by_domain:
            raise ValueError(
                f"unknown dm-control domain {domain!r}; choose from "
                f"{', '.join(sorted(tasks_by_domain))}"
            )
        task = task or DEFAULT_TASKS.get(domain) or tasks_by_domain[domain][0]
        if task not in tasks_by_domain[domain]:
            raise ValueError(
                f"unknown task {task!r} for domain {domain!r}; choose from "
                f"{', '.join(tasks_by_domain[domain])}"
            )
        specs.append(DomainTask(domain, task))
    folders = [s.folder for s in specs]
    if len(set(folders)) != len(folders):
        raise ValueError(f"domains repeat: {', '.join(domains)}")
    return specs


def clip_path(out: Path, spec: DomainTask, clip: int) -> Path:
    return Path(out) / spec.folder / f"clip_{clip:05d}.mp4"


def clip_seed(seed: int, spec: DomainTask, clip: int) -> np.random.SeedSequence:
    """The clip's randomness, from ``(seed, domain-task, clip)`` only (crc32 is stable)."""
    return np.random.SeedSequence([seed, zlib.crc32(spec.name.encode()), clip])


def check_dm_control() -> None:
    """Raise ``DmcUnavailable`` unless dm-control and a mujoco it works with are installed."""
    if importlib.util.find_spec("dm_control") is None or importlib.util.find_spec("mujoco") is None:
        raise DmcUnavailable(f"dm-control is not installed: {INSTALL_HINT}")
    version = importlib.metadata.version("mujoco")
    if int(version.split(".")[0]) >= 4:
        raise DmcUnavailable(
            f"mujoco {version} is installed but dm-control needs mujoco 3.x: {INSTALL_HINT}"
        )


@cache
def find_renderer() -> str:
    """The headless OpenGL backend for ``MUJOCO_GL``: its current value, else egl, then osmesa.

    Each candidate renders one frame in a child process, since dm-control fixes its backend at
    import and a failing one cannot be retried in the same process.
    """
    check_dm_control()
    if "dm_control._render" in sys.modules:
        backend = sys.modules["dm_control._render"].BACKEND
        if backend is None:
            raise DmcUnavailable("dm_control was imported before MUJOCO_GL was set; "
                                 "set MUJOCO_GL=egl or MUJOCO_GL=osmesa")
        return backend
    wanted = os.environ.get("MUJOCO_GL")
    failures = []
    for backend in [wanted] if wanted else RENDERERS:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], env={**os.environ, "MUJOCO_GL": backend},
            capture_output=True, text=True, timeout=300,
        )
        if result.returncode == 0:
            return backend
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        failures.append(f"MUJOCO_GL={backend}: {reason}")
    raise DmcUnavailable(f"no headless OpenGL renderer works ({'; '.join(failures)}); "
                         f"{RENDERER_HINT}")


def render_dmc(
    domains: Sequence[str] = DEFAULT_DOMAINS,
    clips: int = 64,
    frames: int = 16,
    size: int = 64,
    out: str | Path = "data/dmc",
    workers: int = 1,
    seed: int = 0,
    camera: int | str = 0,
    policy: str = "auto",
    frame_interval: float = 0.04,
    fps: int = 8,
    progress: bool = True,
) -> RenderSummary:
    """Render ``clips`` clips of ``frames`` frames at ``size`` px for each of ``domains``.

    ``domains``: ``"cheetah"`` (its default task) or ``"domain-task"``. ``camera``: camera id or
    name of each scene (0 is the suite's side or fixed view). ``policy``: ``"random"`` (smoothed
    random actions), ``"gait"`` (a sinusoid per actuator plus smoothed noise) or ``"auto"`` (gait
    for legged and swimming bodies). ``frame_interval``: simulated seconds between frames.
    ``workers`` > 1 renders in that many spawned processes. Existing clips are skipped.
    """
    if clips < 1 or frames < 1 or workers < 1:
        raise ValueError(f"clips, frames, workers must be >= 1, got {clips}, {frames}, {workers}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (H.264 4:2:0), got {size}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if frame_interval <= 0 or fps < 1:
        raise ValueError(f"frame_interval must be > 0 and fps >= 1: {frame_interval}, {fps}")
    if not domains:
        raise ValueError("no domains given")
    renderer = find_renderer()
    # dm-control reads MUJOCO_GL when first imported, here or in spawned workers.
    os.environ.setdefault("MUJOCO_GL", renderer)
    from dm_control import suite

    specs = parse_domains(domains, suite.ALL_TASKS)
    out = Path(out)
    pending, skipped = {}, 0
    for spec in specs:
        pending[spec] = []
        for clip in range(clips):
            path = clip_path(out, spec, clip)
            if path.exists():
                _write_caption(path, spec.caption)  # in case the sidecar was deleted
                skipped += 1
            else:
                pending[spec].append(clip)
    per_load = max(1, min(CLIPS_PER_LOAD, math.ceil(sum(map(len, pending.values())) / workers)))
    jobs = [
        _Job(spec, tuple(todo[i:i + per_load]), frames, size, out, seed, camera, policy,
             frame_interval, fps)
        for spec, todo in pending.items() for i in range(0, len(todo), per_load)
    ]
    total = sum(len(job.clips) for job in jobs)
    start = time.perf_counter()
    bar = tqdm(total=total, unit="clip", desc="render-dmc", leave=False, disable=not progress)
    with bar:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                _render_job(job, on_clip=bar.update)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(jobs))) as pool:
                for done in pool.imap_unordered(_render_job, jobs):
                    bar.update(done)
    return RenderSummary(out, renderer, total, skipped, total * frames,
                         time.perf_counter() - start)


def _render_job(job: _Job, on_clip: Callable[[int], object] | None = None) -> int:
    """Render the job's clips with one environment; returns how many were written."""
    from dm_control import suite

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # deprecation notes from the suite's XML, once per load
    try:
        # No time limit: a clip longer than an episode would otherwise jump back to the start.
        env = suite.load(job.spec.domain, job.spec.task,
                         task_kwargs={"time_limit": float("inf")})
    finally:
        absl_logger.setLevel(level)
    physics = env.physics
    try:
        quality, buffer = physics.model.vis.quality, physics.model.vis.global_
        quality.offsamples, quality.shadowsize = 0, 0  # no MSAA, no shadow map: 2-3x faster
        buffer.offwidth, buffer.offheight = job.size, job.size
        camera = _camera_id(physics, job.camera, job.spec)
        repeat = max(1, round(job.frame_interval / env.control_timestep()))
        policy = job.policy
        if policy == "auto":
            policy = "gait" if job.spec.domain in GAIT_DOMAINS else "random"
        for clip in job.clips:
            video = _render_clip(env, job, clip, camera, repeat, policy)
            path = clip_path(job.out, job.spec, clip)
            _write_caption(path, job.spec.caption)
            temporary = path.with_name(f".{path.stem}.{os.getpid()}.mp4")
            write_mp4(video, temporary, fps=job.fps)
            os.replace(temporary, path)
            if on_clip is not None:
                on_clip(1)
    finally:
        # Freed now: OSMesa's render thread is gone by the time atexit would free it.
        physics.free()
    return len(job.clips)


def _camera_id(physics, camera: int | str, spec: DomainTask) -> int:
    names = [physics.model.id2name(i, "camera") for i in range(physics.model.ncam)]
    if isinstance(camera, str) and not camera.lstrip("-").isdigit():
        if camera not in names:
            raise ValueError(f"{spec.name} has no camera {camera!r}; cameras: {', '.join(names)}")
        return names.index(camera)
    if not 0 <= int(camera) < len(names):
        raise ValueError(f"{spec.name} has cameras 0..{len(names) - 1} ({', '.join(names)}), "
                         f"got {camera}")
    return int(camera)


def _render_clip(env, job: _Job, clip: int, camera: int, repeat: int, policy: str) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8; the task's initial state and the actions come from
    the clip's seed only, so reusing ``env`` for several clips changes nothing."""
    sequence = clip_seed(job.seed, job.spec, clip)
    task_seed, action_seed = sequence.spawn(2)
    env.task.random.seed(task_seed.generate_state(1)[0])
    env.reset()
    spec = env.action_spec()
    low, high = spec.minimum, spec.maximum
    actions = _actions(np.random.default_rng(action_seed), job.frames * repeat, spec.shape[0],
                       env.control_timestep(), policy)
    physics = env.physics
    video = np.empty((job.frames, job.size, job.size, 3), np.uint8)
    for i in range(job.frames):
        video[i] = physics.render(job.size, job.size, camera_id=camera)
        for action in actions[i * repeat:(i + 1) * repeat]:
            env.step(low + (action + 1.0) * 0.5 * (high - low))
    return video


def _actions(rng: np.random.Generator, steps: int, dims: int, dt: float, policy: str) -> np.ndarray:
    """Actions in [-1, 1]: an Ornstein-Uhlenbeck walk (0.2 s correlation time), plus for
    ``gait`` a sinusoid of 1-3 Hz with a random phase per actuator."""
    decay = math.exp(-dt / 0.2)
    noise = np.empty((steps, dims))
    state = rng.standard_normal(dims)
    for t in range(steps):
        state = decay * state + math.sqrt(1.0 - decay**2) * rng.standard_normal(dims)
        noise[t] = state
    if policy == "random":
        return np.clip(0.6 * noise, -1.0, 1.0)
    frequency = rng.uniform(1.0, 3.0)
    phase = rng.uniform(0.0, 2 * math.pi, dims)
    amplitude = rng.uniform(0.6, 1.0)
    time_axis = np.arange(steps)[:, None] * dt
    return np.clip(amplitude * np.sin(2 * math.pi * frequency * time_axis + phase) + 0.3 * noise,
                   -1.0, 1.0)


def _write_caption(video: Path, caption: str) -> None:
    sidecar = video.with_suffix(".txt")
    if sidecar.is_file() and sidecar.read_text().strip() == caption:
        return
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    temporary = sidecar.with_name(f".{sidecar.stem}.{os.getpid()}.txt")
    temporary.write_text(caption + "\n")
    os.replace(temporary, sidecar)
