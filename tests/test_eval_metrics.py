"""The evaluation metrics against known answers on synthetic sequences (issue 18, "Correctness tests").

Expected values come from how each sequence was made (the shift, the noise, the gain), written
here independently of the code under test; CLIP and PickScore are checked against a direct
computation with the transformers models, done the way the official scripts do it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from transformers import CLIPModel, CLIPProcessor

from cvgen.server.core.models.cache import ModelCache
from cvgen.server.core.models.registry import ModelRegistry
from cvgen.server.eval import clip_metrics, flow, metrics

HEIGHT, WIDTH = 48, 64


def texture(dx: float = 0.0, dy: float = 0.0, seed: int = 0, low: float = 0.2, high: float = 0.8) -> np.ndarray:
    """(H, W, 3) smooth colour texture in [low, high], moved by (dx, dy) pixels (exact, analytic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    image = np.zeros((HEIGHT, WIDTH, 3))
    for channel in range(3):
        for _ in range(5):
            fx, fy = rng.uniform(0.1, 0.5, 2)
            image[..., channel] += np.sin(fx * (xx - dx) + fy * (yy - dy) + rng.uniform(0, 2 * np.pi))
    return (low + (high - low) * (0.5 + image / 10)).astype(np.float32)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The sRGB inverse EOTF (IEC 61966-2-1), clipped to [0, 1]."""
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


def rec709_luminance(linear: np.ndarray) -> np.ndarray:
    return (linear[..., 0] * 0.2126 + linear[..., 1] * 0.7152 + linear[..., 2] * 0.0722).astype(np.float32)


def moving(count: int, vx: float, vy: float) -> np.ndarray:
    return np.stack([texture(vx * t, vy * t) for t in range(count)])


def test_dis_recovers_a_known_subpixel_shift() -> None:
    for vx, vy in ((0.3, -0.2), (0.5, 0.25), (-0.7, 0.4)):
        found = flow.dis_flow(texture(), texture(vx, vy))
        end_point_error = np.sqrt((found[..., 0] - vx) ** 2 + (found[..., 1] - vy) ** 2).mean()
        assert end_point_error < 0.1, (vx, vy, end_point_error)


def test_warp_error_of_a_sequence_against_itself_is_zero() -> None:
    sequence = moving(5, 0.5, 0.25)
    found = metrics.warp_error(sequence, [1001, 1002, 1003, 1004, 1005], flow.consecutive_flows(sequence))
    assert found.not_computed is None and sorted(found.per_frame) == [1001, 1002, 1003, 1004]
    assert found.value < 1e-4
    # the same frames in another order are far from consistent: the metric can fail
    shuffled = sequence[[0, 3, 1, 4, 2]]
    assert metrics.warp_error(shuffled, list(range(5)), flow.consecutive_flows(sequence)).value > 100 * found.value


def test_known_noise_gives_the_analytic_warp_error() -> None:
    sigma = 0.02
    clean = np.stack([texture()] * 6)
    noisy = clean + np.random.default_rng(3).normal(0, sigma, clean.shape).astype(np.float32)
    found = metrics.warp_error(noisy, list(range(6)), flow.consecutive_flows(clean)).value
    # two independent noises differ with variance 2 sigma^2 per channel; the error sums R, G and B
    assert found == pytest.approx(3 * 2 * sigma**2, rel=0.04)


def test_a_disoccluded_region_is_masked() -> None:
    """A bright textured square moving 4 px right over a static, dim background: the background it
    covers next frame is occluded, so it is masked and does not count as warp error."""
    background = texture(seed=1, low=0.2, high=0.3)
    frames = []
    for t in range(3):
        frame = background.copy()
        left = 10 + 4 * t
        frame[14:34, left:left + 16] = texture(dx=left, seed=2, low=0.6, high=1.0)[14:34, left:left + 16]
        frames.append(frame)
    sequence = np.stack(frames)
    pairs = flow.consecutive_flows(sequence)
    covered_next = pairs[0].visible[16:32, 26:30]        # background right of the square at t=0
    assert covered_next.mean() < 0.15                    # DIS smears the square's edge by about a pixel
    assert pairs[0].visible[:, 44:].mean() > 0.9         # far background stays
    assert pairs[0].visible[18:30, 12:22].min() == 1.0  # the moving square stays
    # a result that paints the covered strip white at t=0 is not penalised: nothing in t+1 shows it
    painted = sequence.copy()
    painted[0, 16:32, 26:30] = 1.0
    added = metrics.warp_error(painted, [0, 1, 2], pairs).value - metrics.warp_error(sequence, [0, 1, 2], pairs).value
    difference = np.sum((painted[0] - sequence[0]) ** 2, axis=2)
    unmasked = np.mean(difference) / 2                      # what an unmasked mean would add (2 frame pairs)
    assert unmasked > 0.003 and abs(added) < 0.1 * unmasked


def flickering(amplitude: float, count: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Static linear texture times a gain of 2^(amplitude u_t) per frame: display, luminance, the
    clean display (for flow) and the known mean |change| in stops."""
    stops = amplitude * np.random.default_rng(7).uniform(-1, 1, count)
    linear = texture(low=0.05, high=0.45)
    frames = np.stack([linear * 2**s for s in stops]).astype(np.float32)
    return (srgb_encode(frames), rec709_luminance(frames), np.stack([srgb_encode(linear)] * count),
            float(np.mean(np.abs(np.diff(stops)))))


def test_flicker_of_known_amplitude_raises_warp_error_and_reads_in_stops() -> None:
    warp_errors, readings = [], []
    for amplitude in (0.0, 0.05, 0.1, 0.2, 0.4):
        display, luminance, clean, expected = flickering(amplitude)
        pairs = flow.consecutive_flows(clean)
        frames = list(range(len(display)))
        warp_errors.append(metrics.warp_error(display, frames, pairs).value)
        readings.append(metrics.flicker(luminance, frames, pairs, None).value)
        assert readings[-1] == pytest.approx(expected, abs=2e-3)
    assert warp_errors == sorted(warp_errors) and len(set(warp_errors)) == len(warp_errors)
    assert readings == sorted(readings) and readings[0] < 1e-3


def test_flicker_stays_inside_the_matte_and_skips_black() -> None:
    display, luminance, clean, expected = flickering(0.3)
    matte = np.zeros(luminance.shape, np.float32)
    matte[:, 10:30, 10:40] = 1.0
    steady = luminance[0].copy()
    luminance = np.where(matte > 0, luminance, steady)     # the gain only inside the matte
    luminance[:, 12:16, 12:16] = 0.0                       # black inside the matte: no stops to compare
    pairs = flow.consecutive_flows(clean)
    frames = list(range(len(luminance)))
    inside = metrics.flicker(luminance, frames, pairs, matte)
    assert inside.value == pytest.approx(expected, abs=2e-3)
    assert all(math.isfinite(v) for v in inside.per_frame.values())
    assert metrics.flicker(luminance, frames, pairs, None).value < 0.5 * expected


def test_interpolation_psnr_is_high_for_linear_motion_and_drops_with_flicker() -> None:
    sequence = moving(5, 0.5, 0.25)
    skips = flow.skip_flows(sequence)
    frames = list(range(5))
    error, peak = metrics.interpolation(sequence, frames, skips)
    assert sorted(peak.per_frame) == [1, 2, 3]
    assert peak.value > 38 and error.value < 0.03
    previous = peak.value
    for amplitude in (0.05, 0.1, 0.2):
        gain = 2 ** (amplitude * np.array([1, -1, 1, -1, 1], np.float32))
        flickered = metrics.interpolation(sequence * gain[:, None, None, None], frames, skips)[1].value
        assert flickered < previous - 1.0
        previous = flickered


def test_harmonisation_error_has_the_analytic_values() -> None:
    original = np.stack([texture()] * 2)
    result = original.copy()
    result[:, 8:24, 16:48] += 0.1
    matte = np.zeros(original.shape[:3], np.float32)
    matte[:, 8:24, 16:48] = 1.0
    mse, fmse, peak = metrics.harmonization(result, original, [1, 2], matte)
    share = 16 * 32 / (HEIGHT * WIDTH)
    assert mse.value == pytest.approx(0.01 * share, rel=1e-4)
    assert fmse.value == pytest.approx(0.01, rel=1e-4)
    assert peak.value == pytest.approx(10 * math.log10(1 / (0.01 * share)), rel=1e-4)
    assert metrics.harmonization(result, original, [1, 2], None)[1].not_computed.startswith("no matte")
    assert all(m.not_computed.startswith("no original") for m in metrics.harmonization(result, None, [1, 2], None))


# --- CLIP and PickScore against transformers, computed here the way the official scripts do -------------------

@pytest.fixture(scope="module")
def models() -> dict[str, clip_metrics.LoadedOrWhy]:
    registry = ModelRegistry({})
    cache = ModelCache(registry)
    return {kind: clip_metrics.load(registry, cache, f"tiny-{kind}", kind) for kind in ("clip", "pickscore")}


def direct_embeddings(model_path, processor_path, display: np.ndarray, prompt: str) -> tuple[np.ndarray, ...]:
    """Unit image and text embeddings and logit scale, straight from transformers: PIL frames resized to 480x480."""
    model = CLIPModel.from_pretrained(model_path).eval()
    processor = CLIPProcessor.from_pretrained(processor_path, backend="pil")
    frames = [PILImage.fromarray(np.round(frame * 255).astype(np.uint8)).resize((480, 480)) for frame in display]
    with torch.no_grad():
        image = model.get_image_features(**processor(images=frames, return_tensors="pt")).pooler_output
        tokens = processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
    unit = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy().astype(np.float64)  # noqa: E731
    return unit(image), unit(text), float(model.logit_scale.detach().exp())


def test_clip_and_pickscore_equal_a_direct_transformers_computation(models) -> None:
    display = np.stack([texture(seed=s) for s in range(4)])
    prompt = "a red car on a wet street"
    frames = [1001, 1002, 1003, 1004]
    clip_entry = ModelRegistry({}).entry("tiny-clip")
    image, text, scale = direct_embeddings(clip_entry.path, clip_entry.path, display, prompt)
    cosine = image @ image.T
    every, consecutive, alignment = clip_metrics.clip_metrics(display, frames, prompt, models["clip"])
    pairs = [cosine[i, j] for i in range(4) for j in range(4) if i != j]
    assert every.value == pytest.approx(np.mean(pairs), abs=1e-5)
    assert consecutive.value == pytest.approx(np.mean([cosine[i, i + 1] for i in range(3)]), abs=1e-5)
    assert alignment.value == pytest.approx(scale * np.mean(image @ text[0]), abs=1e-4)
    assert alignment.per_frame[1003] == pytest.approx(scale * image[2] @ text[0], abs=1e-4)

    pick_entry = ModelRegistry({}).entry("tiny-pickscore")
    image, text, scale = direct_embeddings(pick_entry.path, pick_entry.option("processor"), display, prompt)
    score = clip_metrics.pickscore_metric(display, frames, prompt, models["pickscore"])
    assert scale == pytest.approx(100.0)
    assert score.value == pytest.approx(scale * np.mean(image @ text[0]), abs=1e-4)


def test_all_pairs_and_consecutive_consistency_differ_where_they_must(models) -> None:
    """Frames X X Y Y: consecutive pairs are (1 + c + 1) / 3, all ordered pairs (4 + 8c) / 12."""
    x, y = texture(seed=1), texture(seed=5, low=0.0, high=0.3)
    every, consecutive, _ = clip_metrics.clip_metrics(np.stack([x, x, y, y]), [1, 2, 3, 4], "", models["clip"])
    entry = ModelRegistry({}).entry("tiny-clip")
    image, _, _ = direct_embeddings(entry.path, entry.path, np.stack([x, y]), "")
    c = float(image[0] @ image[1])
    assert c < 0.999
    assert consecutive.value == pytest.approx((2 + c) / 3, abs=1e-5)
    assert every.value == pytest.approx((4 + 8 * c) / 12, abs=1e-5)
    assert consecutive.value - every.value > 0.1 * (1 - c)


def test_a_model_not_configured_is_not_computed_with_the_reason() -> None:
    registry = ModelRegistry({})
    missing = clip_metrics.load(registry, ModelCache(registry), "", "clip")
    assert missing.model is None and "no CLIP model configured" in missing.why
    found = clip_metrics.clip_metrics(np.stack([texture()] * 2), [1, 2], "a prompt", missing)
    assert all(m.value is None and m.not_computed == missing.why for m in found)
    unknown = clip_metrics.load(registry, ModelCache(registry), "clip-l", "clip")
    assert "No CLIP model named 'clip-l'" in unknown.why
