import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity

from lavie_model.curation import demo_corpus
from lavie_model.curation.demo_corpus import CONCEPT_PROMPTS, PROMPTS
from lavie_model.curation.scores import ScoreConfig, load_clip
from lavie_model.evaluation.metrics import (FallbackExtractor, clipsim, frame_embeddings, frechet_distance, fvd,
                                            load_video_extractor, psnr, ssim, temporal_consistency)
from lavie_model.evaluation.shapes import (BIG_FROM, apparent_radius, direction, displacement,
                                           named_background, named_colour, parse_prompt, shapes_adherence, track)
from lavie_model.evaluation.stats import Rate, binomial_p, mean_interval, paired_comparison, paired_text, wilson


def scene_video(scene: demo_corpus.Scene, frames: int = 6, size: int = demo_corpus.SIZE) -> torch.Tensor:
    """(f, 3, size, size) in [0, 1], drawn by the demo corpus's own renderer (area-resized from 128 px)."""
    video = torch.from_numpy(demo_corpus.render(scene, frames)).permute(0, 3, 1, 2).float() / 255
    return video if size == demo_corpus.SIZE else F.interpolate(video, size=(size, size), mode="area")


def all_scenes() -> list[demo_corpus.Scene]:
    """Every colour x direction x background, shapes, radii and offsets varied."""
    combos = itertools.product(demo_corpus.COLOURS, demo_corpus.DIRECTIONS, demo_corpus.BACKGROUNDS)
    return [demo_corpus.Scene(demo_corpus.SHAPES[i % 3], colour, background, moving, 0.12 + 0.02 * (i % 4),
                              0.3 + 0.1 * (i % 5))
            for i, (colour, moving, background) in enumerate(combos)]


def noise_videos(n: int, frames: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: one intra-op thread, so that no op waits for a second, busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip():
    model, preprocess, tokenizer, label = load_clip(ScoreConfig())  # the tiny random CLIP: no weights
    assert label == "tiny-random"
    return model, preprocess, tokenizer


# ------------------------------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_identical_is_capped_and_known_noise_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    a = 0.2 + 0.6 * torch.rand(2, 3, 3, 16, 16, generator=generator)
    assert psnr(a, a) == pytest.approx(100.0)
    signs = torch.randint(0, 2, a.shape, generator=generator) * 2 - 1
    assert psnr(a, a + 0.1 * signs) == pytest.approx(10 * math.log10(1 / 0.01), abs=1e-4)  # MSE 0.01: 20 dB
    b = (a + 0.05 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    per_frame = 10 * torch.log10(1 / (a - b).pow(2).mean(dim=(2, 3, 4)))  # (b, f)
    assert psnr(a, b) == pytest.approx(float(per_frame.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:, :2])


def test_ssim_is_one_for_identical_videos_decreases_with_noise_and_matches_skimage():
    generator = torch.Generator().manual_seed(0)
    a = torch.stack([scene_video(scene, frames=3, size=48) for scene in all_scenes()[:2]])  # (2, 3, 3, 48, 48)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    noisy = [(a + level * torch.randn(a.shape, generator=generator)).clamp(0, 1) for level in (0.02, 0.1, 0.3)]
    values = [ssim(a, b) for b in noisy]
    assert 1 > values[0] > values[1] > values[2]
    reference = np.mean([
        structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0, channel_axis=0)
        for x, y in zip(a.flatten(0, 1), noisy[1].flatten(0, 1))])
    assert values[1] == pytest.approx(reference, abs=1e-4)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[..., :8, :8], a[..., :8, :8])


# ---------------------------------------------------------------------------------------------- Frechet distance


def whitened(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) samples with mean exactly 0 and covariance (normalised by n) exactly the identity."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(0)
    return z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / n)).T


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    d = 6
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    std_a, std_b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    a = mu_a + whitened(200, d, 2) * std_a
    b = mu_b + whitened(300, d, 3) * std_b
    closed_form = np.square(mu_a - mu_b).sum() + np.square(std_a - std_b).sum()
    assert frechet_distance(a, b) == pytest.approx(closed_form, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(closed_form, rel=1e-9)

    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    shifts = [frechet_distance(a, a + shift) for shift in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([d * 0.25, d * 1.0, d * 4.0], rel=1e-9)  # |shift|^2 summed over d features


def test_frechet_distance_agrees_with_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    root = np.real(scipy.linalg.sqrtm(sigma_a @ sigma_b))
    expected = np.square(mu_a - mu_b).sum() + np.trace(sigma_a + sigma_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


# ---------------------------------------------------------------------------------------------------------- CLIP


def test_clipsim_is_a_cosine_and_matches_the_curation_scores_pil_path(clip):
    model, preprocess, tokenizer = clip
    scenes = all_scenes()[:3]
    videos = torch.stack([scene_video(scene, frames=4, size=64) for scene in scenes])  # (3, 4, 3, 64, 64)
    captions = [scene.caption() for scene in scenes]
    value = clipsim(model, preprocess, tokenizer, videos, captions)
    assert -1 <= value <= 1

    # scores.py's way: PIL frames through the same preprocess, then the mean caption-frame cosine
    with torch.no_grad():
        images = torch.stack([preprocess(Image.fromarray((frame.permute(1, 2, 0) * 255).round().byte().numpy()))
                              for frame in videos.flatten(0, 1)])  # (12, 3, 32, 32)
        image_embeddings = F.normalize(model.encode_image(images), dim=-1).reshape(3, 4, -1)
        text_embeddings = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)  # (3, d)
    expected = float(torch.einsum("bfd,bd->bf", image_embeddings, text_embeddings).mean())
    assert value == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="captions"):
        clipsim(model, preprocess, tokenizer, videos, captions[:2])


def test_temporal_consistency_of_a_static_video_is_one_and_beats_noise(clip):
    model, preprocess, _ = clip
    frame = scene_video(all_scenes()[0], frames=1, size=64)  # (1, 3, 64, 64)
    static = frame.expand(5, -1, -1, -1)[None]  # (1, 5, 3, 64, 64)
    noise = noise_videos(1, frames=5, size=64)
    static_value, noise_value = temporal_consistency(model, preprocess, static), \
        temporal_consistency(model, preprocess, noise)
    assert static_value == pytest.approx(1.0, abs=1e-5)
    assert -1 <= noise_value < static_value
    assert frame_embeddings(model, preprocess, noise).shape == (1, 5, model.visual.output_dim)


# ----------------------------------------------------------------------------------------------------------- FVD


def test_fallback_extractor_is_deterministic_labelled_and_separates_sets():
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    extractor = load_video_extractor()
    assert torch.equal(torch.rand(1), expected_draw)  # building it leaves the global RNG alone
    assert isinstance(extractor, FallbackExtractor)
    assert extractor.name.startswith("fallback:") and "NOT I3D" in extractor.name

    scenes = [all_scenes()[i] for i in torch.randperm(144, generator=torch.Generator().manual_seed(0))]
    real = torch.stack([scene_video(scene, size=32) for scene in scenes[:40]])  # (40, 6, 3, 32, 32)
    other = torch.stack([scene_video(scene, size=32) for scene in scenes[40:80]])  # the same distribution
    features = extractor(real)
    assert features.shape == (40, 32)
    assert torch.equal(load_video_extractor()(real), features)  # same features from a fresh instance

    same = fvd(extractor, real, real, batch_size=7)
    assert same == {"value": pytest.approx(0, abs=1e-6), "extractor": extractor.name, "n_real": 40, "n_fake": 40}
    alike = fvd(extractor, real, other)["value"]
    assert fvd(extractor, real.split(8), other.split(16))["value"] == pytest.approx(alike, rel=1e-6)  # batches
    frozen = other[:, :1].expand_as(other)  # the first frame held: no motion
    for unlike in (noise_videos(40), frozen, other * 0.7 + 0.15):
        assert fvd(extractor, real, unlike)["value"] > 2 * alike > 0


class TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call, checks what StyleGAN-V passes, returns channel means."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.dim() == 5 and x.shape[1] == 3, "expected uint8 (n, 3, t, h, w)"
        assert rescale and resize and return_features, "expected rescale=True, resize=True, return_features=True"
        return x.float().mean(dim=(2, 3, 4))  # (n, 3)


def test_i3d_extractor_loads_a_torchscript_file_and_calls_it_as_stylegan_v(tmp_path):
    path = tmp_path / "tiny_i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    extractor = load_video_extractor(path)
    assert extractor.name == "i3d:tiny_i3d.pt"
    videos = noise_videos(4, frames=7, size=20)  # (4, 7, 3, 20, 20): t differs from h and w
    features = extractor(videos)
    assert torch.allclose(features, (videos * 255).round().mean(dim=(1, 3, 4)))  # uint8, channels second
    result = fvd(extractor, videos, noise_videos(5, frames=7, size=20, seed=1))
    assert result["extractor"] == "i3d:tiny_i3d.pt" and result["n_fake"] == 5 and result["value"] >= 0
    with pytest.raises(FileNotFoundError, match="I3D"):
        load_video_extractor(tmp_path / "missing.pt")


# -------------------------------------------------------------------------------------------------------- shapes


def test_parse_prompt_follows_the_corpus_grammar():
    for scene in all_scenes():
        assert parse_prompt(scene.caption()) == (scene.colour, scene.shape, scene.direction, scene.background)
    assert parse_prompt("An orange square standing still on a noisy background.") == \
        ("orange", "square", None, "noisy")
    two_shots = "a red circle moving left on a gray background, then a blue square moving up on a white background"
    for text in (two_shots, "a cat on a sofa", "a pink circle moving left on a gray background",
                 "a big big red circle on a gray background"):
        assert parse_prompt(text) is None
    big = demo_corpus.Scene("triangle", "orange", "noisy", "up", 0.27, 0.5)
    assert big.big and big.caption() == "a big orange triangle moving up on a noisy background"
    assert parse_prompt(big.caption()) == ("orange", "triangle", "up", "noisy") and demo_corpus.is_big(big.caption())
    assert not demo_corpus.is_big("an orange triangle moving up on a noisy background")
    assert [demo_corpus.is_big(p) for p in CONCEPT_PROMPTS] == [True] * len(PROMPTS)
    assert [parse_prompt(p) for p in CONCEPT_PROMPTS] == [parse_prompt(p) for p in PROMPTS]


def test_big_shapes_are_told_from_ordinary_ones_by_their_apparent_radius():
    """Every shape kind at the corpus's radii, at the 32 px the tiny cascade draws: ordinary ones below BIG_FROM,
    big ones above; shapes_adherence counts the big prompts and those drawn big."""
    ordinary = [demo_corpus.Scene(shape, "red", background, "left", radius, 0.5) for shape in demo_corpus.SHAPES
                for background in ("gray", "striped") for radius in demo_corpus.RADIUS]
    big = [demo_corpus.Scene(shape, "blue", background, "down", radius, 0.4) for shape in demo_corpus.SHAPES
           for background in ("white", "noisy") for radius in demo_corpus.BIG_RADIUS]
    for scene in ordinary + big:
        radius = apparent_radius(track(scene_video(scene, size=32)), scene.shape)
        assert (radius >= BIG_FROM) == scene.big, (scene, radius)
        assert radius == pytest.approx(scene.radius, rel=0.35)  # a small triangle at 32 px reads up to 31% large
    videos = [scene_video(scene, size=32) for scene in ordinary + big]
    big_prompts = [scene.caption() for scene in big]
    result = shapes_adherence(videos, [s.caption() for s in ordinary] + big_prompts)
    assert (result["big"], result["big_hits"]) == (len(big), len(big))
    swapped = shapes_adherence(videos[:len(big)], big_prompts)  # ordinary shapes for "a big ..." prompts
    assert (swapped["big"], swapped["big_hits"]) == (len(big), 0)
    assert apparent_radius(track(noise_videos(1)[0]), "circle") is None  # no shape found


@pytest.mark.parametrize("size", [128, 32])
def test_tracker_recovers_colour_and_direction_of_rendered_shapes(size):
    scenes = all_scenes()  # 6 colours x 4 directions x 6 backgrounds (plain and textured)
    videos = [scene_video(scene, size=size) for scene in scenes]
    result = shapes_adherence(videos, [scene.caption() for scene in scenes])
    assert result["n"] == len(scenes) == 144
    assert result["colour_accuracy"] >= 0.9 and result["direction_accuracy"] >= 0.9
    assert result["colour_hits"] == round(144 * result["colour_accuracy"])
    assert result["direction_hits"] == round(144 * result["direction_accuracy"])
    assert result["moving"] == 144 and result["mean_displacement"] == pytest.approx(0.5, abs=0.02)  # corpus: 0.5
    if size == 32:  # played backwards, every video moves against its prompt
        backwards = shapes_adherence([video.flip(0) for video in videos], [scene.caption() for scene in scenes])
        assert backwards["colour_accuracy"] >= 0.9 and backwards["direction_accuracy"] <= 0.1


@pytest.mark.parametrize("size", [128, 64, 32, 16])
def test_background_recogniser_names_every_corpus_background(size):
    """Plain backgrounds by their grey level, textures by their structure, the shape masked out, at the sizes
    the cascade works at; random noise frames are no plain background."""
    scenes = all_scenes()
    frames = [scene_video(scene, frames=1, size=size)[0] for scene in scenes]
    names = [named_background(frame) for frame in frames]
    wrong = [(scene.background, name) for scene, name in zip(scenes, names) if name != scene.background]
    assert len(wrong) <= len(scenes) // 20, wrong  # (the area resize here, not the training one: near all)
    assert {named_background(frame) for frame in noise_videos(8, frames=1, size=size)[:, 0]} <= {"noisy", "striped",
                                                                                                 "checkered"}
    with pytest.raises(ValueError, match="expected a frame"):
        named_background(frames[0][None])


def test_still_captions_parse_without_a_direction():
    assert parse_prompt("a red circle on a gray background") == ("red", "circle", None, "gray")
    assert parse_prompt("an orange triangle on a noisy background.") == ("orange", "triangle", None, "noisy")
    assert parse_prompt("a red circle  on a gray background") is None


def test_tracker_details_and_noise_videos_score_low():
    scene = demo_corpus.Scene("triangle", "purple", "striped", "up", 0.15, 0.4)
    result = track(scene_video(scene))
    assert result.centroids.shape == (6, 2) and not result.centroids.isnan().any()
    assert result.centroids[:, 0] == pytest.approx(0.4, abs=0.02)  # x stays at the offset
    assert result.centroids[0, 1] > result.centroids[-1, 1]  # rows shrink: moving up
    assert named_colour(result.colour) == "purple" and direction(result.centroids) == "up"
    assert displacement(result.centroids) == pytest.approx(0.5, abs=0.02)
    still = demo_corpus.Scene("circle", "red", "gray", None, 0.15, 0.5)
    assert direction(track(scene_video(still)).centroids) is None
    assert displacement(track(scene_video(still)).centroids) == pytest.approx(0, abs=0.01)
    assert displacement(torch.full((3, 2), math.nan)) is None  # no shape found: no displacement
    assert named_colour(None) is None

    prompts = [scene.caption() for scene in all_scenes()[:16]] + ["a cat on a sofa"]
    result = shapes_adherence(noise_videos(17), prompts)
    assert result["n"] == 16 and len(result["per_sample"]) == 17
    assert result["colour_hits"] == round(16 * result["colour_accuracy"]) and 0 <= result["moving"] <= 16
    assert result["colour_accuracy"] <= 0.2 and result["direction_accuracy"] <= 0.2
    assert result["per_sample"][-1]["colour_ok"] is None


# ------------------------------------------------------------------------------------------------- rates


def test_wilson_interval_on_known_cases():
    assert wilson(10, 32) == pytest.approx((0.1795, 0.4857), abs=5e-4)
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=5e-4)  # z^2 / (n + z^2): 3.84 / 13.84
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    # the Wilson bounds are where the score test just rejects: (p_hat - p)^2 = z^2 p (1 - p) / n
    z = 1.959963984540054
    for hits, n in ((10, 32), (3, 16), (50, 200)):
        for bound in wilson(hits, n):
            assert (hits / n - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, rel=1e-9)
        assert wilson(hits, n)[0] == pytest.approx(1 - wilson(n - hits, n)[1])  # symmetric in hits and misses
    with pytest.raises(ValueError, match="hits <= n"):
        wilson(5, 4)


def test_mean_interval_on_known_cases():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.3027
    assert mean == 2 and (low, high) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-3)
    assert mean_interval([5.0, 5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)  # no spread: the mean alone
    assert mean_interval([30.0]) == (30.0, -math.inf, math.inf)  # one clip: its spread is unknown
    mean, low, high = mean_interval(range(100))  # large n: close to the normal interval, 1.96 standard errors
    assert high - mean == pytest.approx(1.984 * np.std(range(100), ddof=1) / 10, rel=1e-3)


def test_a_paired_comparison_beats_its_reference_only_where_both_intervals_clear():
    """The model against a reference on the same clips: the clips it is ahead on (Wilson) and the mean per-clip
    difference (Student t), with their 95% intervals against published quantiles."""
    reference = torch.tensor([30.0, 31.0, 29.0, 32.0])
    # 4 clips, +0.8 dB on average with a huge spread: ahead on 2 of 4, the mean's interval about +-6.4 dB
    few = paired_comparison(reference + torch.tensor([4.5, -2.9, 4.1, -2.5]), reference)
    half = 3.1824 * np.std([4.5, -2.9, 4.1, -2.5], ddof=1) / 2  # t(0.975, 3) = 3.1824
    assert few["difference"]["mean"] == pytest.approx(0.8)
    assert (few["difference"]["low"], few["difference"]["high"]) == pytest.approx((0.8 - half, 0.8 + half), abs=1e-3)
    assert few["wins"] == Rate(2, 4).as_dict() and few["n"] == 4
    assert not few["beats"] and not few["loses"]
    assert paired_text(few, "the latent blend") == (f"ahead of the latent blend on {Rate(2, 4)} of the clips, "
                                                    f"+0.80 dB (95% {0.8 - half:+.2f} to {0.8 + half:+.2f})")
    # 96 clips each 0.1-0.3 dB ahead: 96/96, whose Wilson low is n / (n + z^2), and a tight interval above zero
    lead = 0.2 + 0.05 * (torch.arange(96) % 5 - 2)  # (96,)
    many = paired_comparison(30 + lead, torch.full((96,), 30.0))
    assert many["beats"] and many["wins"]["hits"] == 96 and many["wins"]["low"] == pytest.approx(96 / (96 + 1.96**2),
                                                                                                  abs=1e-4)
    half = 1.9853 * float(lead.std()) / 96**0.5  # t(0.975, 95) = 1.9853
    assert many["difference"]["low"] == pytest.approx(float(lead.mean()) - half, abs=1e-4)
    # ahead on average beyond the interval, but on 39 of 96 clips only (31%-51%, as the shipped tiny LaVie): no win
    minority = paired_comparison(torch.tensor([1.0] * 39 + [-0.3] * 57), torch.zeros(96))
    assert minority["difference"]["low"] > 0 and minority["wins"]["high"] > 0.5 and not minority["beats"]
    # behind on average beyond the interval: it loses; a tie on a clip is no win
    behind = paired_comparison([29.0, 29.5, 28.8, 30.0, 30.0], [30.0, 30.2, 29.9, 30.4, 30.0])
    assert behind["loses"] and not behind["beats"] and behind["wins"]["hits"] == 0
    assert paired_comparison([30.0], [29.0])["difference"] == {"mean": 1.0, "low": -math.inf, "high": math.inf}
    with pytest.raises(ValueError, match="one per sample"):
        paired_comparison([30.0, 31.0], [30.0])


def test_binomial_p_value_on_exact_cases():
    assert binomial_p(10, 32, 0.25) == pytest.approx(0.2633, abs=5e-4)  # 10 of 32 directions: chance can do it
    assert binomial_p(0, 7, 0.3) == pytest.approx(1.0)
    assert binomial_p(2, 2, 0.5) == pytest.approx(0.25)
    assert binomial_p(1, 2, 0.5) == pytest.approx(0.75)
    assert binomial_p(3, 3, 1 / 6) == pytest.approx(1 / 216)
    assert binomial_p(2, 3, 1 / 6) == pytest.approx(3 * (1 / 6) ** 2 * (5 / 6) + 1 / 216)
    with pytest.raises(ValueError):
        binomial_p(4, 3, 0.5)


def test_a_rate_beats_a_baseline_only_with_its_whole_interval_above_it():
    rate = Rate(10, 32)
    assert rate.value == pytest.approx(0.3125) and rate.low == pytest.approx(wilson(10, 32)[0])
    assert str(rate).startswith("31% (10/32, 18") and "49%)" in str(rate)
    assert not rate.beats(0.25)  # 31% is above chance, its interval (18-49%) is not
    assert Rate(20, 32).beats(0.25) and Rate(20, 32).beats(Rate(8, 32))  # low 45%; a Rate is compared by value
    assert not Rate(16, 16).beats(1.0)  # strictly above
    assert not Rate(0, 0).beats(0.0) and str(Rate(0, 0)) == "n/a (0 samples)"
    assert Rate(3, 16).as_dict() == {"value": 0.1875, "hits": 3, "n": 16, "low": Rate(3, 16).low,
                                     "high": Rate(3, 16).high}
