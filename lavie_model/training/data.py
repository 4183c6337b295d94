"""Streaming training data from WebDataset shards: deterministic, split over ranks and workers, resumable.

Every data loader worker of every rank is one *consumer*. Each epoch the shard order is shuffled with the
run's seed (the same on all ranks); when there are at least as many shards as consumers each consumer reads
its own shards, otherwise every consumer reads all shards and keeps every n-th sample. Samples pass a
shuffle buffer and epochs follow each other without end. Everything random (the buffer, frame offsets,
caption dropping) is drawn from generators seeded by (seed, consumer, sample index), so the stream is a
function of the seed alone, and resuming after `skip_batches` batches reproduces the rest of it exactly
without decoding what it skips. `validation_clips` reads the held-out validation split, which the stream leaves
out, for scoring.

Shards may come from elsewhere: a member whose name is absolute or climbs out with `..`, or whose size is over
`max_member_bytes()` (LAVIE_MAX_MEMBER_MB, default 256 MiB), is refused with the shard and the member named, by
`check_shards` before training (headers only) and by `raw_samples` before reading its bytes.
"""

import glob
import io
import json
import os
import random
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from .scenes import is_held_out, random_still

STAGES = ("t2i", "upscaler", "base", "interpolation", "vsr")
MAX_SKIPPED = 10_000  # clips too short in a row before the data is declared unusable
MAX_MEMBER_MB = 256  # a shard member larger than this is refused (no training clip is near); LAVIE_MAX_MEMBER_MB
SKIPPED_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, not samples


def expand_shards(spec, what: str = "shards") -> list[Path]:
    """Shard files from a comma-separated list (or a list) of paths, brace patterns, globs or folders."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    shards, unmatched = [], []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        found = []
        for pattern in braceexpand(part):
            path = Path(pattern)
            if path.is_dir():
                found += sorted(path.rglob("*.tar"))
            elif path.is_file():
                found.append(path)
            else:
                found += [Path(p) for p in sorted(glob.glob(pattern)) if p.endswith(".tar")]
        if not found:
            unmatched.append(part)
        shards += found
    if unmatched:
        raise FileNotFoundError(f"no {what} found at {', '.join(unmatched)}")
    if not shards:
        raise FileNotFoundError(f"no {what} given")
    return list(dict.fromkeys(shards))  # each shard once, in order


def max_member_bytes() -> int:
    """The largest shard member read: LAVIE_MAX_MEMBER_MB (read in every process, so ranks and data loader
    workers agree), else MAX_MEMBER_MB."""
    value = os.environ.get("LAVIE_MAX_MEMBER_MB", "")
    try:
        return int(float(value or MAX_MEMBER_MB) * 2**20)
    except ValueError:
        raise ValueError(f"LAVIE_MAX_MEMBER_MB must be a number of megabytes, got {value!r}") from None


def member_problem(member: tarfile.TarInfo, limit: int) -> str | None:
    """Why a tar member is refused, or None: an absolute name, a name with `..`, more than `limit` bytes."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute():
        return "an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "a path with '..'"
    if member.size > limit:
        return f"{member.size:,} bytes, over the limit of {limit:,} (raise it with LAVIE_MAX_MEMBER_MB)"
    return None


def refused(shard: Path, member: tarfile.TarInfo, problem: str) -> ValueError:
    return ValueError(f"shard {shard}: member {member.name!r} refused: {problem}")


def check_shards(shards, limit: int | None = None) -> None:
    """Read every member header of each shard (seeking past the data) and raise, naming the shard and the member,
    at the first that `member_problem` refuses."""
    limit = max_member_bytes() if limit is None else limit
    for shard in shards:
        try:
            with tarfile.open(shard, "r:*") as tar:
                while (member := tar.next()) is not None:
                    problem = member_problem(member, limit)
                    if problem:
                        raise refused(shard, member, problem)
                    tar.members = []  # headers of a large shard are not kept
        except tarfile.TarError as error:
            raise ValueError(f"cannot read shard {shard}: {error}") from error


def shard_files(shard: Path, stream, limit: int) -> Iterator[dict]:
    """The regular members of a tar stream as {"fname", "data", "__url__"} (webdataset's tar_file_iterator, with
    every member checked by `member_problem` before its data is read)."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            problem = member_problem(member, limit)
            if problem:
                raise refused(shard, member, problem)
            if member.isreg() and not SKIPPED_MEMBER.match(member.name):
                yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": str(shard)}
            tar.members = []


def raw_samples(shard: Path) -> Iterator[dict]:
    """The samples of one tar shard as {"__key__": key, extension: bytes}; members refused as in check_shards."""
    limit = max_member_bytes()
    try:
        with open(shard, "rb") as stream:
            yield from group_by_keys(shard_files(shard, stream, limit))
    except tarfile.TarError as error:
        raise ValueError(f"cannot read shard {shard}: {error}") from error


def is_validation(key: str, percent: float) -> bool:
    """Whether a sample belongs to the held-out validation split: a fixed function of its key, so every
    run, rank and tool agrees (about `percent` % of keys)."""
    import hashlib

    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10000 < percent * 100


def seeded(*numbers: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(n) for n in numbers]))


def consumer_stream(shards: list[Path], seed: int, consumer: int, consumers: int, buffer: int) -> Iterator[dict]:
    """This consumer's endless, shuffled share of the shards' samples."""

    def epochs():
        for epoch in count():
            order = [shards[i] for i in seeded(seed, epoch).permutation(len(shards))]
            split_by_shard = len(shards) >= consumers
            mine = order[consumer::consumers] if split_by_shard else order
            found = 0
            index = 0
            for shard in mine:
                for sample in raw_samples(shard):
                    if split_by_shard or index % consumers == consumer:
                        found += 1
                        yield sample
                    index += 1
            if not found:
                raise ValueError(f"{len(shards)} shard(s) hold {index} samples, too few for {consumers} data "
                                 "loader workers over all ranks: use fewer workers or more data")

    rng = random.Random(int(seeded(seed, consumer, 1 << 20).integers(1 << 62)))
    pool = []
    for sample in epochs():
        if len(pool) < buffer:
            pool.append(sample)
            continue
        i = rng.randrange(len(pool))
        pool[i], sample = sample, pool[i]
        yield sample


@dataclass
class StageData:
    """What one stage reads from a sample: frame count and spacing, pixel size, images per video."""

    stage: str
    num_frames: int          # frames per training video
    frame_stride: int        # spacing of those frames in the curated clip
    size: tuple[int, int]    # (height, width) in pixels
    image_frames: int = 0    # images appended per video sample (base stage, stand-ins)
    text_drop: float = 0.0
    rendered_frames: int = 0  # stills of the shapes grammar rendered on the fly, appended after the images
    held_out: bool = False   # leave out samples captioned with a held-out combination (scenes.HELD_OUT)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}")

    @property
    def span(self) -> int:
        """Consecutive clip frames one training video covers."""
        return (self.num_frames - 1) * self.frame_stride + 1


def read_npy(sample: dict, name: str) -> np.ndarray:
    """The array `{key}.{name}.npy` of a latent sample (no pickles)."""
    data = sample.get(f"{name}.npy")
    if data is None:
        raise ValueError(f"sample {sample['__key__']} of {sample.get('__url__', 'a shard')} has no {name}.npy: "
                         "not a latent shard (made by training/latents.py)")
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_video(data: bytes, key: str) -> torch.Tensor:
    """An mp4's frames as (f, 3, h, w) uint8."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"sample {key}: cannot decode its video: {error}") from error
    if not frames:
        raise ValueError(f"sample {key}: its video has no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def decode_image(data: bytes, key: str) -> torch.Tensor:
    """An image as (3, h, w) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"sample {key}: cannot decode its image: {error}") from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def resize_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, 3, h, w) uint8 -> (n, 3, H, W) floats in [-1, 1]: scaled to cover (H, W), centre-cropped."""
    height, width = size
    scale = max(height / frames.shape[2], width / frames.shape[3])
    scaled = (max(height, round(frames.shape[2] * scale)), max(width, round(frames.shape[3] * scale)))
    x = frames.float() / 127.5 - 1
    if scaled != tuple(frames.shape[2:]):
        x = F.interpolate(x, size=scaled, mode="bilinear", antialias=True, align_corners=False)
    top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
    return x[:, :, top:top + height, left:left + width].clamp(-1, 1)


def caption_of(sample: dict) -> str:
    text = sample.get("txt")
    if text is None:
        raise ValueError(f"sample {sample['__key__']} has no caption (.txt)")
    try:
        return text.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"sample {sample['__key__']} of {sample.get('__url__', 'a shard')}: its caption is not "
                         f"UTF-8 (byte 0x{text[error.start]:02x} at offset {error.start})") from None


def frame_count(sample: dict) -> int | None:
    """The clip's frame count from its `.json` metadata, when recorded there."""
    if "json" not in sample:
        return None
    record = json.loads(sample["json"])
    value = record.get("frame_count", record.get("latent_frames"))  # latent samples record what they hold
    return int(value) if value is not None else None


def validation_clips(shards, percent: float, count: int, frames: int, size: tuple[int, int]) -> list[dict]:
    """Up to `count` held-out clips with at least `frames` frames: key, caption, (frames, 3, h, w) in [0, 1] at
    `size`, and the decoded (frames, 3, H, W) uint8 `source` for other sizes."""
    clips = []
    for shard in expand_shards(shards, "video shards"):
        for sample in raw_samples(shard):
            if len(clips) == count:
                return clips
            if not is_validation(sample["__key__"], percent):
                continue
            video = decode_video(sample["mp4"], sample["__key__"])
            if len(video) >= frames:
                clips.append({"key": sample["__key__"], "caption": sample["txt"].decode().strip(),
                              "frames": (resize_crop(video[:frames], size) + 1) / 2, "source": video[:frames]})
    return clips

class TrainingStream(IterableDataset):
    """Training examples for one stage from video shards (and, for the base stage, image shards).

    Each example: {"key", "frames": (F, 3, H, W) in [-1, 1], "caption"} and, with images or rendered stills,
    {"images": (M + R, 3, H, W), "image_captions": list of M + R, "image_keys"} (rendered stills are keyed
    "rendered/SEED/CONSUMER/INDEX/J"). Clips too short for the stage are skipped and counted under "skipped"
    in the next example, so that the trainer can report them; clips of the validation split
    (`validation_percent`, see is_validation) are left out for evaluation, and with `stage.held_out` so are
    samples captioned with a held-out combination of the shapes grammar (scenes.HELD_OUT). Clips whose caption
    names a word of `exclude_words` are left out too (the ablation that keeps concepts out of the videos).

    With `latents`, `videos` and `images` are latent shards (latents.py) mirroring the curated ones, and each
    example holds, instead of pixels, the VAE posterior of the same frames and images and the stored caption
    embeddings: {"mean", "std": (F, c, h, w), "text": (tokens, dim)} (vsr family: "low_res" (F, 3, h, w)),
    with images {"image_mean", "image_std": (M, c, h, w), "image_text": (M, tokens, dim)}. The samples, frame
    offsets and dropped captions ("") are those of the curated shards with the same seed.
    """

    def __init__(self, videos: list[Path], stage: StageData, seed: int, rank: int = 0, world_size: int = 1,
                 images: list[Path] | None = None, shuffle_buffer: int = 100, batch_size: int = 1,
                 skip_batches: int = 0, validation_percent: float = 0.0, exclude_words: tuple[str, ...] = (),
                 latents: bool = False):
        super().__init__()
        if images and not stage.image_frames:
            raise ValueError(f"image shards were given, but the {stage.stage} stage takes no images "
                             "(image_frames is 0 or the stage is not base)")
        if latents and stage.rendered_frames:
            raise ValueError("stills rendered on the fly (rendered_frames) have no precomputed latents: "
                             "train the stand-ins on pixels")
        self.latents = latents
        self.videos, self.images, self.stage, self.seed = videos, images or [], stage, seed
        self.rank, self.world_size, self.buffer = rank, world_size, shuffle_buffer
        self.batch_size, self.skip_batches, self.validation_percent = batch_size, skip_batches, validation_percent
        self.exclude = re.compile(rf"\b({'|'.join(map(re.escape, exclude_words))})\b", re.IGNORECASE) if exclude_words else None

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        # batches of this worker already consumed: the loader takes batches from its workers in turn
        skip = max(0, -(-(self.skip_batches - worker) // workers)) * self.batch_size
        videos = consumer_stream(self.videos, self.seed, consumer, consumers, self.buffer)
        images = consumer_stream(self.images, self.seed + 1, consumer, consumers, self.buffer) if self.images else None
        if images is not None and self.stage.held_out:
            images = (sample for sample in images if not is_held_out(caption_of(sample)))
        skipped = excluded = 0
        for index in count():
            sample = next(videos)
            if is_validation(sample["__key__"], self.validation_percent):
                continue
            if self.stage.held_out and is_held_out(caption_of(sample)):
                continue
            if self.exclude is not None and self.exclude.search(caption_of(sample)):
                excluded += 1
                if excluded == MAX_SKIPPED:
                    raise ValueError(f"{excluded} clips in a row name an excluded word ({self.exclude.pattern}): "
                                     "nothing is left to train on")
                continue
            excluded = 0
            frames = None
            known = frame_count(sample)
            if known is None:  # no metadata: decode to count
                frames = self.frames_of(sample)
                known = len(frames)
            if known < self.stage.span:
                skipped += 1
                if skipped == MAX_SKIPPED:
                    raise ValueError(f"{skipped} clips in a row are shorter than the {self.stage.span} frames the "
                                     f"{self.stage.stage} stage needs: curate longer clips or train on fewer frames")
                continue
            image_samples = [next(images) for _ in range(self.stage.image_frames)] if images else []
            if skip:
                skip -= 1
                continue
            rng = seeded(self.seed, consumer, index)
            if frames is None:
                frames = self.frames_of(sample)
            make = self.latent_example if self.latents else self.example
            yield make(sample, frames, image_samples, rng, f"rendered/{self.seed}/{consumer}/{index}") \
                | {"skipped": skipped}
            skipped = 0

    def frames_of(self, sample: dict):
        """The clip's frames: (f, 3, h, w) uint8 decoded, or with `latents` the posterior's mean and std."""
        if self.latents:
            return read_npy(sample, "mean"), read_npy(sample, "std")
        return decode_video(sample["mp4"], sample["__key__"])

    def draw(self, sample: dict, frames: int, image_samples: list[dict], rng) -> tuple[slice, np.ndarray]:
        """The frames this example takes from a clip of `frames` frames, and which captions it drops."""
        stage = self.stage
        if frames < stage.span:
            raise ValueError(f"sample {sample['__key__']}: its metadata says at least {stage.span} frames, "
                             f"its video has {frames}")
        start = int(rng.integers(frames - stage.span + 1))
        drop = rng.random(1 + len(image_samples) + stage.rendered_frames) < stage.text_drop
        return slice(start, start + stage.span, stage.frame_stride), drop

    def latent_example(self, sample: dict, frames, image_samples: list[dict], rng, rendered_key: str) -> dict:
        mean, std = frames
        pick, drop = self.draw(sample, len(mean), image_samples, rng)

        def tensor(array):  # float16 as stored -> float32
            return torch.from_numpy(np.ascontiguousarray(array)).float()

        example = {"key": sample["__key__"], "mean": tensor(mean[pick]), "std": tensor(std[pick]),
                   "text": tensor(read_npy(sample, "text")), "caption": "" if drop[0] else caption_of(sample)}
        if "low_res.npy" in sample:
            example["low_res"] = tensor(read_npy(sample, "low_res")[pick])
        if image_samples:
            example |= {
                "image_mean": tensor(np.stack([read_npy(s, "mean")[0] for s in image_samples])),
                "image_std": tensor(np.stack([read_npy(s, "std")[0] for s in image_samples])),
                "image_text": tensor(np.stack([read_npy(s, "text") for s in image_samples])),
                "image_keys": [s["__key__"] for s in image_samples],
                "image_captions": ["" if d else caption_of(s) for s, d in zip(image_samples, drop[1:])]}
        return example

    def example(self, sample: dict, frames: torch.Tensor, image_samples: list[dict], rng, rendered_key: str) -> dict:
        stage = self.stage
        pick, drop = self.draw(sample, len(frames), image_samples, rng)
        example = {"key": sample["__key__"], "frames": resize_crop(frames[pick], stage.size),
                   "caption": "" if drop[0] else caption_of(sample)}
        pictures = [resize_crop(decode_image(s["jpg"], s["__key__"])[None], stage.size)[0] for s in image_samples]
        keys, captions = [s["__key__"] for s in image_samples], [caption_of(s) for s in image_samples]
        for j in range(stage.rendered_frames):
            still, caption = random_still(rng)
            pictures.append(resize_crop(still[None], stage.size)[0])
            keys.append(f"{rendered_key}/{j}")
            captions.append(caption)
        if pictures:
            example |= {"images": torch.stack(pictures), "image_keys": keys,
                        "image_captions": ["" if d else c for c, d in zip(captions, drop[1:])]}
        return example


def collate(examples: list[dict]) -> dict:
    """Stack tensors; keep keys and captions as lists (per example, and per image for image captions)."""
    batch = {}
    for name in examples[0]:
        values = [example[name] for example in examples]
        if torch.is_tensor(values[0]):
            batch[name] = torch.stack(values)
        elif name == "skipped":
            batch[name] = sum(values)
        else:
            batch[name] = values
    return batch
