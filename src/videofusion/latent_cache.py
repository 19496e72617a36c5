"""The latent cache: the frozen VAE's latents of the training clips, encoded once, on disk.

Latent training (``--vae``) otherwise encodes every batch on every step, although the VAE is
frozen and the posterior mean it trains on (``videofusion.vae``) is a pure function of the
frame. ``prepare`` encodes the training set once into a folder and the trainer reads its batches
from there (``--latent-cache FOLDER``); the VAE is then used only to decode, for previews and
the exported pipeline.

Layout: ``FOLDER/entries/<key>.safetensors``, one per clip of moving digits or per video of a
folder, holding ``latents`` float32 ``(latent channels, n, h, w)`` and ``frames`` int64
``(n,)``, the source frames they encode, with the metadata ``depends`` (JSON) and ``sha256``
(of the latents' bytes); ``FOLDER/manifest.json`` lists what each entry depends on, its
checksum and shape, and the videos that could not be decoded. An entry depends on:

- the VAE: a SHA-256 of its weights and config (``scaling_factor`` included, not its path);
- the data: size and channels (moving digits: every generator option, and a hash of item 0's
  pixels, which changes with the generator's code);
- the item: moving digits' index; a video's path under the root, its size and mtime (a frame
  folder's: those of each image), and the frames held.

The VAE encodes frames one by one, so a video's entry holds every frame a clip may use: all of
them with ``start: random`` (each epoch's random clip is read out of the entry), the one clip's
with ``start: center``. So no dataset option is refused and a cached batch is the batch
on-the-fly encoding would have seen; there is no other augmentation to honour (crops are
centred, no flips). The cost: a long video is encoded whole, once.

An entry whose ``depends`` differ from what the VAE and data give now is stale; one that does
not load, holds other tensors, shapes or dtypes, non-finite values, or bytes whose SHA-256
differs from its own or the manifest's record, is corrupt. ``prepare`` re-encodes both and says
so in one line with the counts; reading an entry in training checks it again and stops the run
with one line rather than use it. Entries are written under a temporary name and renamed
(``os.replace``): a killed build leaves no part of an entry, and, as each entry describes itself,
keeps the entries it finished even before the manifest is written. (No fsync per entry: an entry
cut short by a power loss is found corrupt and re-encoded.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import checkpoint, safety
from .data import MovingDigits, VideoFolder
from .data.video_folder import frame_files
from .vae import encode_video, vae_scale_factor

FORMAT = 1
MANIFEST = "manifest.json"
ENTRIES = "entries"
logger = logging.getLogger(__name__)

CHUNK_FRAMES = 64  # frames of a video decoded and encoded at a time: bounds the pixel memory


class CorruptLatentCache(safety.RunStopped):
    """An entry read in training is missing or fails its checks; the run stops (one line)."""


class _Undecodable(Exception):
    """A video that cannot deliver its frames; skipped as ``VideoFolder`` skips it."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """The checksum of an entry: SHA-256 of the tensor's bytes."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def vae_fingerprint(vae) -> str:
    """SHA-256 of the VAE's config and weights: what its latents are a function of. Config keys
    starting with ``_`` (the folder it was loaded from, the diffusers version) are left out."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json(value) -> dict:
    """``value`` as JSON gives it back (lists for tuples), to compare with what was stored."""
    return json.loads(json.dumps(value, sort_keys=True))


class _Digits:
    """Moving digits: entry ``i`` is clip ``i``, a pure function of the options and ``i``."""

    def __init__(self, dataset: MovingDigits):
        self.dataset = dataset
        self.size = (dataset.height, dataset.width)

    def fingerprint(self) -> dict:
        d = self.dataset
        options = {"split": d.split, "frames": d.num_frames, "size": self.size,
                   "digits": d.num_digits, "channels": d.channels, "colors": d.colors,
                   "sources": d.sources, "digit_size": d.digit_size, "speed": d.speed,
                   "seed": d.seed}
        return {"moving_digits": options, "item_0_sha256": tensor_sha256(d[0]["video"])}

    def key(self, i: int) -> str:
        return f"digits-{i:08d}"

    def identity(self, i: int) -> dict:
        return {"index": i}

    def frames(self, i: int) -> range:
        return range(self.dataset.num_frames)

    def chunks(self, i: int) -> list[range]:
        return [self.frames(i)]

    def pixels(self, i: int, frames: range) -> torch.Tensor:
        return self.dataset[i]["video"][:, frames.start:frames.stop]  # (C, n, H, W)

    def clip(self, i: int) -> list[int]:
        return list(range(self.dataset.num_frames))

    def label(self, i: int) -> tuple[int, str]:
        meta = self.dataset.metadata(i)
        return meta["class_label"], meta["caption"]


class _Videos:
    """A folder of videos: entry ``i`` holds the frames of video ``i`` that a clip may use."""

    def __init__(self, dataset: VideoFolder):
        self.dataset = dataset
        self.size = dataset.size

    def fingerprint(self) -> dict:
        return {"video_folder": {"size": self.size, "channels": self.dataset.channels}}

    def _relative(self, i: int) -> str:
        return self.dataset.entries[i].path.relative_to(self.dataset.root).as_posix()

    def key(self, i: int) -> str:
        return f"video-{hashlib.sha256(self._relative(i).encode()).hexdigest()[:20]}"

    def identity(self, i: int) -> dict:
        entry, frames = self.dataset.entries[i], self.frames(i)
        try:
            files = frame_files(entry.path) if entry.is_frame_folder else [entry.path]
            stat = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        except OSError as err:
            stat = f"unreadable ({err})"
        if entry.is_frame_folder and not isinstance(stat, str):
            stat = hashlib.sha256(json.dumps(stat).encode()).hexdigest()
        return {"path": self._relative(i), "stat": stat,
                "frames": [frames.start, frames.stop, frames.step]}

    def frames(self, i: int) -> range:
        d = self.dataset
        if d.start == "random":
            return range(d.entries[i].num_frames)
        first = d.frame_indices(i)[0]
        return range(first, first + d.span, d.frame_stride)

    def chunks(self, i: int) -> list[range]:
        frames = self.frames(i)
        return [frames[j:j + CHUNK_FRAMES] for j in range(0, len(frames), CHUNK_FRAMES)]

    def pixels(self, i: int, frames: range) -> torch.Tensor:
        try:
            return self.dataset.read_frames(i, list(frames))
        except Exception as err:  # decoders raise many types on corrupt data
            raise _Undecodable(f"failed to decode ({' '.join(str(err).split())})") from err

    def clip(self, i: int) -> list[int]:
        held = self.frames(i)
        return [held.index(j) for j in self.dataset.frame_indices(i)]

    def label(self, i: int) -> tuple[int, str]:
        entry = self.dataset.entries[i]
        return entry.class_label, entry.caption


def _source(dataset: Dataset) -> _Digits | _Videos:
    if isinstance(dataset, MovingDigits):
        return _Digits(dataset)
    if isinstance(dataset, VideoFolder):
        return _Videos(dataset)
    raise ValueError(f"latent_cache: cannot cache a {type(dataset).__name__} (moving digits "
                     "and video folders only): train without --latent-cache")


@dataclass
class CacheReport:
    """What ``prepare`` found and did, as counts of entries."""

    folder: Path
    entries: int = 0
    valid: int = 0
    new: int = 0
    stale: int = 0
    corrupt: int = 0
    undecodable: int = 0
    encoded: int = 0
    written: bool = True
    seconds: float = 0.0
    example: str = ""  # the first corrupt or stale entry and why

    @property
    def to_encode(self) -> int:
        return self.new + self.stale + self.corrupt

    def line(self) -> str:
        done = (f"encoded {self.encoded} in {self.seconds:.1f} s" if self.written else
                f"{self.to_encode} to encode (nothing written)")
        counts = [f"{self.entries} entries", f"{self.valid} valid"] + [
            f"{n} {what}" for n, what in (
                (self.new, "new"), (self.stale, "stale (VAE or source changed)"),
                (self.corrupt, "corrupt"), (self.undecodable, "undecodable (skipped)")) if n]
        example = f" (first: {self.example})" if self.example else ""
        return f"latent cache {self.folder}: {', '.join(counts)}{example}; {done}"


class LatentCache:
    """The cache of one dataset under one VAE in ``folder``: checks, writes and reads entries.
    Holds no model, so that DataLoader workers get it cheaply."""

    def __init__(self, folder: str | Path, dataset: Dataset, vae):
        self.folder = Path(folder)
        self.source = _source(dataset)
        where = vae.config.get("_name_or_path")  # for a reader: not what an entry depends on
        self.vae = {"sha256": vae_fingerprint(vae), "loaded_from": where and str(where)}
        factor = vae_scale_factor(vae)
        if vae.config.in_channels != dataset.channels:
            raise ValueError(f"vae: takes {vae.config.in_channels}-channel images, the data has "
                             f"{dataset.channels} channels")
        if any(side % factor for side in self.source.size):
            raise ValueError(f"latent_cache: the clips' size {self.source.size} is not divisible "
                             f"by the VAE's factor {factor}")
        self.latent_size = (vae.config.latent_channels, self.source.size[0] // factor,
                            self.source.size[1] // factor)
        self.data = _json(self.source.fingerprint())
        self.records: dict[str, dict] = {}  # key -> manifest record, valid entries only
        self.bad: dict[int, str] = {}  # undecodable videos -> why

    def path(self, key: str) -> Path:
        return self.folder / ENTRIES / f"{key}.safetensors"

    def depends(self, item: dict) -> dict:
        return {"format": FORMAT, "vae": self.vae["sha256"], "data": self.data, "item": item}

    def shape(self, frames: range) -> tuple[int, ...]:
        channels, h, w = self.latent_size
        return channels, len(frames), h, w

    def read_manifest(self) -> dict:
        """The manifest as written, or ``{}`` when there is none or it is unreadable (the
        entries describe themselves: nothing is lost but the cross-check)."""
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        parts = ("vae", "data", "entries", "bad")
        ok = isinstance(manifest, dict) and all(isinstance(manifest.get(k), dict) for k in parts)
        return manifest if ok else {}

    def check(self, i: int, manifest: dict) -> tuple[str, str]:
        """Entry ``i``'s status (``valid``, ``new``, ``stale``, ``corrupt``, ``bad``: known
        undecodable) and why; a valid one's record is kept for reading."""
        key, item = self.source.key(i), _json(self.source.identity(i))
        same = (manifest.get("vae", {}).get("sha256") == self.vae["sha256"]
                and manifest.get("data") == self.data)
        bad = manifest.get("bad", {}).get(key) if same else None
        if bad is not None and bad.get("item") == item:
            self.bad[i] = bad.get("reason", "undecodable")
            return "bad", self.bad[i]
        path = self.path(key)
        if not path.is_file():
            return "new", ""
        try:
            tensors, metadata = _read(path)
            depends, sha = json.loads(metadata["depends"]), metadata["sha256"]
            if not isinstance(depends, dict):
                raise ValueError(f"depends is a {type(depends).__name__}")
        except Exception as err:  # SafetensorError, OSError, missing or bad metadata
            return "corrupt", f"unreadable ({' '.join(str(err).split())})"
        expected = self.depends(item)
        if depends != expected:
            changed = next((what for part, what in (
                ("vae", "another VAE"), ("data", "other data settings"),
                ("item", "its source changed")) if depends.get(part) != expected[part]),
                "another cache format")
            return "stale", changed
        frames = self.source.frames(i)
        problem = _problem(tensors, sha, self.shape(frames), frames)
        if problem:
            return "corrupt", problem
        record = manifest.get("entries", {}).get(key) if same else None
        if record is not None and record.get("sha256") != sha:
            return "corrupt", "its checksum differs from the manifest's"
        self.records[key] = _record(item, frames, sha, self.shape(frames))
        return "valid", ""

    def write(self, i: int, latents: torch.Tensor, frames: range) -> None:
        """Entry ``i`` from its latents ``(c, n, h, w)``: a temporary file, then renamed."""
        from safetensors.torch import save

        key, item = self.source.key(i), _json(self.source.identity(i))
        sha = tensor_sha256(latents)
        data = save({"latents": latents.contiguous(),
                     "frames": torch.tensor(list(frames), dtype=torch.int64)},
                    metadata={"depends": json.dumps(self.depends(item), sort_keys=True),
                              "sha256": sha})
        path = self.path(key)
        tmp = path.with_name(f"{checkpoint.TMP_PREFIX}{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.records[key] = _record(item, frames, sha, latents.shape)

    def manifest(self) -> dict:
        """What the folder holds now: the VAE and data, every valid entry's record, the
        undecodable videos."""
        bad = {self.source.key(i): {"item": _json(self.source.identity(i)), "reason": why}
               for i, why in sorted(self.bad.items())}
        return {"format": FORMAT, "vae": self.vae, "data": self.data,
                "entries": dict(sorted(self.records.items())), "bad": bad}

    def load(self, i: int) -> torch.Tensor:
        """Entry ``i``'s latents ``(c, n, h, w)``, checked again against its record."""
        key = self.source.key(i)
        record = self.records.get(key)
        if record is None:
            raise CorruptLatentCache(f"latent cache {self.folder}: no valid entry {key}; "
                                     "build it with 'videofusion data cache-latents'")
        try:
            tensors, metadata = _read(self.path(key))
            sha = metadata["sha256"]
        except Exception as err:  # SafetensorError, OSError, missing metadata
            sha, tensors = None, {}
            problem = f"unreadable ({' '.join(str(err).split())})"
        else:
            problem = _problem(tensors, sha, tuple(record["shape"]), range(*record["frames"]))
            if not problem and sha != record["sha256"]:
                problem = "its checksum differs from the manifest's"
        if problem:
            raise CorruptLatentCache(f"latent cache {self.folder}: entry {key} went bad during "
                                     f"the run ({problem}); a restart re-encodes it")
        return tensors["latents"]


def _record(item: dict, frames: range, sha: str, shape) -> dict:
    """An entry's line in the manifest: its item, frames, checksum and shape."""
    return {"item": item, "frames": [frames.start, frames.stop, frames.step], "sha256": sha,
            "shape": list(shape)}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def _problem(tensors: dict[str, torch.Tensor], sha: str, shape: tuple[int, ...],
             frames: range) -> str | None:
    """Why an entry's tensors may not be used, or None."""
    if set(tensors) != {"latents", "frames"}:
        return f"holds {sorted(tensors)}, not latents and frames"
    latents, held = tensors["latents"], tensors["frames"]
    if latents.dtype != torch.float32 or tuple(latents.shape) != shape:
        return (f"latents are {str(latents.dtype).removeprefix('torch.')} "
                f"{tuple(latents.shape)}, not float32 {shape}")
    if held.dtype != torch.int64 or held.tolist() != list(frames):
        return "it holds other frames"
    if not torch.isfinite(latents).all():
        return "its latents are not finite"
    if tensor_sha256(latents) != sha:
        return "checksum mismatch"
    return None


class _Pixels(Dataset):
    """Pixels of the chunks to encode, read by DataLoader workers: ``{"pixels", "error"}``."""

    def __init__(self, source: _Digits | _Videos, jobs: list[tuple[int, range]]):
        self.source, self.jobs = source, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, j: int) -> dict:
        i, frames = self.jobs[j]
        try:
            return {"pixels": self.source.pixels(i, frames), "error": ""}
        except _Undecodable as err:
            return {"pixels": torch.empty(0), "error": str(err)}


def prepare(folder: str | Path, dataset: Dataset, vae, *, slice_size: int = 8,
            num_workers: int = 0, write: bool = True) -> tuple[CachedLatents, CacheReport]:
    """The training set ``dataset`` read from its cache in ``folder``, and what was found.

    Every entry is checked; with ``write`` the new, stale and corrupt ones are encoded with
    ``vae`` (on its device, ``slice_size`` frames per call, pixels read by ``num_workers``
    processes) under the folder's lock, and the manifest is written. Without it (a check, or
    the other processes of a distributed run once the main one has built the cache) nothing is
    written and the report counts what would be encoded.
    """
    started = time.perf_counter()
    cache = LatentCache(folder, dataset, vae)
    report = CacheReport(cache.folder, entries=len(dataset), written=write)
    manifest = cache.read_manifest()
    todo = []
    for i in range(len(dataset)):
        status, why = cache.check(i, manifest)
        if status in ("valid", "bad"):
            report.valid += status == "valid"
            report.undecodable += status == "bad"
            continue
        setattr(report, status, getattr(report, status) + 1)
        if why and not report.example:
            report.example = f"{cache.source.key(i)}: {why}"
        todo.append(i)
    # the lock only to write: runs that share a complete cache start side by side
    if write and (todo or cache.manifest() != manifest):
        lock = safety.RunLock(cache.folder, "latent_cache").acquire()
        try:
            (cache.folder / ENTRIES).mkdir(parents=True, exist_ok=True)
            for leftover in (cache.folder / ENTRIES).glob(f"{checkpoint.TMP_PREFIX}*"):
                leftover.unlink()  # a killed build's; the lock says no build runs now
            _encode(cache, todo, vae, slice_size, num_workers, report)
            checkpoint.atomic_write_text(cache.folder / MANIFEST,
                                         json.dumps(cache.manifest()) + "\n")
        finally:
            lock.release()
    report.seconds = time.perf_counter() - started
    return CachedLatents(cache), report


def _encode(cache: LatentCache, todo: list[int], vae, slice_size: int, num_workers: int,
            report: CacheReport) -> None:
    """Encode entries ``todo`` chunk by chunk (one video's chunks in a row) and write each."""
    jobs = [(i, chunk) for i in todo for chunk in cache.source.chunks(i)]
    # a generator of its own: the loader's worker seed must not draw from the global RNG, or
    # a run that builds its cache would start from other weights than one that finds it built
    loader = DataLoader(_Pixels(cache.source, jobs), batch_size=None, num_workers=num_workers,
                        generator=torch.Generator())
    device = next(vae.parameters()).device
    parts: list[torch.Tensor] = []
    for (i, chunk), item in zip(jobs, loader, strict=True):
        if i in cache.bad:
            continue
        if item["error"]:
            logger.warning("skipping video %s: %s", cache.source.dataset.entries[i].path,
                           item["error"])
            cache.bad[i] = item["error"]
            report.undecodable += 1
            parts = []
            continue
        video = item["pixels"][None].to(device)  # (1, C, n, H, W)
        parts.append(encode_video(vae, video, slice_size)[0].cpu())  # (c, n, h, w)
        frames = cache.source.frames(i)
        if chunk[-1] == frames[-1]:
            latents = torch.cat(parts, dim=1)
            parts = []
            if not torch.isfinite(latents).all():
                raise ValueError(f"vae: non-finite latents for entry {cache.source.key(i)} of "
                                 f"the latent cache {cache.folder}")
            cache.write(i, latents, frames)
            report.encoded += 1


class CachedLatents(Dataset):
    """The training set read from the cache: items ``{"latents": float32 (latent channels,
    frames, h, w), "class_label", "caption"}``, the clip the dataset would give now (same epoch,
    same start), in model space. A video that could not be decoded is skipped for the next good
    one, as ``VideoFolder`` does."""

    def __init__(self, cache: LatentCache):
        self.cache = cache
        self.dataset = cache.source.dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int:
        return getattr(self.dataset, "num_classes", 0)

    @property
    def class_names(self) -> list[str] | None:
        return getattr(self.dataset, "class_names", None)

    @property
    def num_skipped(self) -> int:
        return int(getattr(self.dataset, "num_skipped", 0)) + len(self.cache.bad)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self.cache.bad:
                continue
            latents = self.cache.load(i)
            label, caption = self.cache.source.label(i)
            return {"latents": latents[:, self.cache.source.clip(i)], "class_label": label,
                    "caption": caption}
        raise RuntimeError(f"latent cache {self.cache.folder}: no video could be decoded")
