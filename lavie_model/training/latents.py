"""Precomputed latents: curated shards encoded once by the frozen VAE and text encoder, for training to read.

Every training step on pixels decodes the clips, resizes them, and runs the frozen VAE and text encoder over
every frame and caption. A latent shard holds that work done once. It mirrors one curated shard: the same
name, the same samples in the same order, so a stream over latent shards draws exactly the samples, frame
offsets and dropped captions that the stream over the curated shards draws (data.TrainingStream):

    {key}.mean.npy     (f, c, h, w) float16: the VAE posterior's mean of every frame of the clip (image: f = 1)
    {key}.std.npy      (f, c, h, w) float16: its standard deviation; the trainer samples mean + std * noise
                       with each sample's own generator, as it does on pixels
    {key}.text.npy     (tokens, dim) float16: the text encoder's embedding of the caption
    {key}.low_res.npy  (f, 3, H/4, W/4) float16, `vsr` family only: the frames x4 smaller, the VSR condition
    {key}.txt          the caption
    {key}.json         the curated sample's record, and `latent_of`: the curated shard's name and SHA-256

and a manifest {name}.json: name, samples, bytes, sha256, keys, the family, the pixel size, the curated
shard's name and SHA-256, and the identity of the VAE and of the text encoder that made it (a SHA-256 of
their weights). The trainer uses latent shards only when every shard it was given has one made from its
current contents by its own VAE and text encoder at its size (`find_latents`); otherwise it reads pixels
and says why.

Families: `base` (the base and interpolation stages and the base stage's images: `vae` and `text_encoder`
at the base size) and `vsr` (`vsr_vae` and `vsr_text_encoder` at the VSR crop size). The t2i and upscaler
stand-ins render stills on the fly and always read pixels.
"""

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..curation.probe import sha256_of
from ..curation.shards import TAR_FORMAT, tar_member, write_atomically
from ..model_folder import load_components
from ..text import encode_prompts
from .data import decode_image, decode_video, raw_samples, resize_crop
from .stages import low_resolution, stage_data

FAMILIES = ("base", "vsr")
FAMILY_OF = {"base": "base", "interpolation": "base", "vsr": "vsr"}  # stages that can read latents
COMPONENTS = {"base": ("vae", "text_encoder", "tokenizer"), "vsr": ("vsr_vae", "vsr_text_encoder", "vsr_tokenizer")}
CHUNK = 64  # frames per VAE call


def weights_id(module: torch.nn.Module) -> str:
    """A SHA-256 of a module's weights (names, shapes and float32 values): equal exactly when the weights are."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name} {tuple(value.shape)}\n".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Encoders:
    """The frozen VAE and text encoder of one family, the pixel size they encode at, their identity."""

    family: str
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    size: tuple[int, int]

    @classmethod
    def load(cls, folder, family: str, preset: dict, names: tuple[str, str, str] | None = None,
             device="cpu") -> "Encoders":
        """From a model folder: the family's components (`names`: other names for them, e.g. an x4 upscaler
        folder's vae, text_encoder and tokenizer for the vsr family), at the size the preset's stages read."""
        if family not in FAMILIES:
            raise ValueError(f"unknown latent family {family!r}; choose one of {', '.join(FAMILIES)}")
        names = names or COMPONENTS[family]
        components, _ = load_components(folder, list(names), f"{family} latents")
        vae, text_encoder, tokenizer = (components[name] for name in names)
        size = stage_data(family, preset, 2 ** (len(vae.config.block_out_channels) - 1)).size
        vae.to(device, torch.float32).eval().requires_grad_(False)
        text_encoder.to(device, torch.float32).eval().requires_grad_(False)
        return cls(family, vae, text_encoder, tokenizer, tuple(size))

    def identity(self) -> dict:
        return {"vae": weights_id(self.vae), "text_encoder": weights_id(self.text_encoder)}

    @torch.no_grad()
    def frames(self, pixels: torch.Tensor) -> dict:
        """(n, 3, h, w) uint8 -> {"mean", "std"} (n, c, h', w') float16 at the family's size, and for the vsr
        family "low_res" (n, 3, H/4, W/4) float16."""
        x = resize_crop(pixels, self.size)  # (n, 3, H, W) in [-1, 1], as the pixel stream gives it
        means, stds = [], []
        for chunk in x.split(CHUNK):
            dist = self.vae.encode(chunk.to(self.vae.device)).latent_dist
            means.append(dist.mean.cpu())
            stds.append(dist.std.cpu())
        out = {"mean": torch.cat(means), "std": torch.cat(stds)}
        if self.family == "vsr":
            out["low_res"] = low_resolution(x)
        return {name: value.half().numpy() for name, value in out.items()}

    @torch.no_grad()
    def text(self, caption: str) -> np.ndarray:
        """(tokens, dim) float16."""
        embedding = encode_prompts(self.tokenizer, self.text_encoder, [caption], self.text_encoder.device)
        return embedding[0].cpu().half().numpy()


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def encode_shard(source: Path, out_dir: Path, encoders: Encoders, identity: dict, kind: str,
                 progress: Callable[[int], None] = lambda n: None) -> dict:
    """Encode one curated shard (`kind` "video" or "image") into `out_dir`/{same name}.tar and its manifest,
    written under temporary names and renamed into place when complete. A latent shard already made from the
    same shard contents by the same encoders at the same size is kept as it is. Returns the manifest."""
    source = Path(source)
    source_manifest = source.with_suffix(".json")
    curated = json.loads(source_manifest.read_text()) if source_manifest.is_file() else {}
    source_sha = curated.get("sha256") or sha256_of(source)
    header = {"family": encoders.family, "kind": kind, "size": list(encoders.size), **identity,
              "source": {"name": source.name, "sha256": source_sha}, "dtype": "float16"}
    path, manifest_path = Path(out_dir) / source.name, (Path(out_dir) / source.name).with_suffix(".json")
    if path.is_file() and manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if all(old.get(name) == value for name, value in header.items()) and old.get("sha256") == sha256_of(path):
            return old | {"reused": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    started, keys, frames = time.perf_counter(), [], 0
    try:
        with open(partial, "wb") as file, tarfile.open(fileobj=file, mode="w", format=TAR_FORMAT) as tar:
            for sample in raw_samples(source):
                key = sample["__key__"]
                if "txt" not in sample or "json" not in sample:
                    raise ValueError(f"sample {key} of {source} lacks its caption (.txt) or record (.json)")
                caption = sample["txt"].decode("utf-8").strip()
                if kind == "video":
                    if "mp4" not in sample:
                        raise ValueError(f"sample {key} of {source} has no .mp4: not a video shard")
                    pixels = decode_video(sample["mp4"], key)
                else:
                    if "jpg" not in sample:
                        raise ValueError(f"sample {key} of {source} has no .jpg: not an image shard")
                    pixels = decode_image(sample["jpg"], key)[None]
                arrays = encoders.frames(pixels) | {"text": encoders.text(caption)}
                record = json.loads(sample["json"]) | {"latent_of": {"shard": source.name, "sha256": source_sha},
                                                       "latent_frames": len(pixels)}
                members = [(f"{name}.npy", npy_bytes(value)) for name, value in arrays.items()]
                members += [("txt", sample["txt"]), ("json", json.dumps(record, sort_keys=True).encode())]
                for suffix, data in members:
                    tar.addfile(tar_member(f"{key}.{suffix}", len(data)), io.BytesIO(data))
                keys.append(key)
                frames += len(pixels)
                progress(1)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    source_keys = curated.get("keys")
    if source_keys is not None and source_keys != keys:
        path.unlink()
        raise ValueError(f"{source} holds {len(keys)} samples, its manifest lists {len(source_keys)}: the shard "
                         "and its manifest disagree; re-materialize its batch")
    manifest = {"name": path.name, "samples": len(keys), "bytes": path.stat().st_size, "sha256": sha256_of(path),
                "frames": frames, "seconds": round(time.perf_counter() - started, 3), **header, "keys": keys}
    write_atomically(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return manifest


def encode_shards(sources: list[Path], out_dir: Path, encoders: Encoders, kind: str,
                  progress: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Encode curated shards into `out_dir` (see encode_shard); latent shards there that mirror none of
    `sources` (a shard the batch no longer has) are removed. Returns their manifests."""
    identity = encoders.identity()
    manifests = [encode_shard(source, out_dir, encoders, identity, kind, progress) for source in sources]
    names = {manifest["name"] for manifest in manifests}
    for stale in Path(out_dir).glob("*.tar"):
        if stale.name not in names:
            stale.unlink()
            stale.with_suffix(".json").unlink(missing_ok=True)
    return manifests


def find_latents(shards: list[dict], folder, family: str, size: tuple[int, int], identity: dict
                 ) -> tuple[list[Path] | None, str]:
    """The latent shards under `folder` that stand for `shards` (rows with name and sha256), in their order,
    made by encoders of this `identity` at this `size`; or None and the reason they cannot be used."""
    index = {}
    for manifest in sorted(Path(folder).rglob("*.json")):
        try:
            record = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("family") == family and manifest.with_suffix(".tar").is_file():
            index.setdefault(record.get("source", {}).get("sha256"), []).append((manifest.with_suffix(".tar"), record))
    found, missing, other = [], [], []
    for shard in shards:
        candidates = index.get(shard["sha256"], [])
        matching = [path for path, record in candidates if list(record["size"]) == list(size)
                    and record.get("vae") == identity["vae"] and record.get("text_encoder") == identity["text_encoder"]]
        if matching:
            found.append(matching[0])
        elif candidates:
            record = candidates[0][1]
            what = [name for name in ("vae", "text_encoder") if record.get(name) != identity[name]]
            what += [] if list(record["size"]) == list(size) else [f"size {record['size']} (not {list(size)})"]
            other.append(f"{shard['name']} (made with another {' and '.join(what)})")
        else:
            missing.append(shard["name"])
    if missing or other:
        reasons = [f"latents of {', '.join(other[:3])}"] if other else []
        if missing:
            more = " ..." if len(missing) > 3 else ""
            reasons.insert(0, f"{len(missing)} of {len(shards)} shards have no {family} latents made from their "
                              f"current contents under {folder} ({', '.join(missing[:3])}{more})")
        return None, "; ".join(reasons)
    return found, (f"{len(found)} latent shards under {folder} (vae {identity['vae'][:12]}, text encoder "
                   f"{identity['text_encoder'][:12]})")
