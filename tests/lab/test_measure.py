"""Drift measurements: perfect on the truth, worst on the empty background, monotone in between."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from drift_lab.measure import (
    LOSS_CAUSES,
    PSNR_CAP_DB,
    FrameMetrics,
    describe_lost,
    detect,
    lost_object_causes,
    measure,
    psnr,
    summarise,
    temporal_flickering,
)
from drift_lab.world import (
    BACKGROUND_COLOURS,
    OBJECT_COLOURS,
    Background,
    Scene,
    Shape,
    WorldSpec,
    object_states,
    render,
    render_background,
    sample_scene,
    shape_masks,
)

SEEDS = (0, 1, 2, 4, 5, 11)  # plain, textured and panning backgrounds among them
CLIP = 120


def _decreasing(values: list[float], strict: bool) -> bool:
    return all(a > b if strict else a >= b for a, b in itertools.pairwise(values))


def _frames_with_overlap(seed: int, count: int) -> int:
    return int((shape_masks(sample_scene(seed), 0, count).sum(axis=0) > 1).any(axis=(1, 2)).sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_truth_measures_perfect(seed: int) -> None:
    scene = sample_scene(seed)
    metrics = measure(render(scene, 0, CLIP), scene, 0)
    present = metrics.true_count > 0
    assert np.all(metrics.count_error == 0)
    assert np.all(metrics.survival[present] == 1.0)
    assert np.allclose(metrics.colour_error[present], 0.0) and np.allclose(metrics.centroid_error[present], 0.0)
    assert np.all(metrics.background_deviation == 0.0)
    assert np.all(metrics.psnr == PSNR_CAP_DB)
    assert np.all(metrics.psnr_background_floor < 40)
    assert metrics.true_count[0] == len(scene.shapes)


def test_occlusion_is_judged_like_the_truth() -> None:
    # Seeds whose clips contain overlapping objects: the truth must still measure perfect there.
    seeds = [seed for seed in range(40) if _frames_with_overlap(seed, 200)]
    assert seeds, "no overlapping objects in 40 scenes: the occlusion case is not exercised"
    for seed in seeds[:3]:
        scene = sample_scene(seed)
        metrics = measure(render(scene, 0, 200), scene, 0)
        assert np.all(metrics.count_error == 0) and np.nanmin(metrics.survival) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_background_only_loses_every_object(seed: int) -> None:
    scene = sample_scene(seed)
    metrics = measure(render_background(scene, 5, CLIP), scene, 5)
    present = metrics.true_count > 0
    assert np.all(metrics.survival[present] == 0.0)
    assert np.array_equal(metrics.count_error, metrics.true_count)
    assert np.all(np.isnan(metrics.colour_error)) and np.all(np.isnan(metrics.centroid_error))
    assert np.array_equal(metrics.psnr, metrics.psnr_background_floor)
    assert np.all(metrics.background_deviation == 0.0)
    at_start = measure(render_background(scene, 0, 1), scene, 0)
    assert at_start.count_error[0] == len(scene.shapes)


def _faded(truth: np.ndarray, background: np.ndarray, amount: float) -> np.ndarray:
    return np.rint((1 - amount) * truth + amount * background).astype(np.uint8)


@pytest.mark.parametrize("seed", SEEDS)
def test_fading_is_monotone(seed: int) -> None:
    scene = sample_scene(seed)
    truth = render(scene, 0, 40)
    background = render_background(scene, 0, 40)
    amounts = (0.0, 0.1, 0.25, 0.4, 0.7, 0.95)
    summaries = [summarise(measure(_faded(truth, background, a), scene, 0)) for a in amounts]
    psnrs = [s["psnr"] for s in summaries]
    survivals = [s["survival"] for s in summaries]
    colour_errors = [s["colour_error"] for s in summaries if not math.isnan(s["colour_error"])]
    assert _decreasing(psnrs, strict=True) and _decreasing(survivals, strict=False)
    assert _decreasing(colour_errors[::-1], strict=True)
    assert survivals[0] == 1.0 and survivals[-1] == 0.0 and 0.0 < colour_errors[1] < 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_shifting_is_monotone(seed: int) -> None:
    scene = sample_scene(seed)
    truth = render(scene, 0, 40)
    shifts = (0, 1, 3, 6, 40)
    summaries = [summarise(measure(np.roll(truth, shift, axis=2), scene, 0)) for shift in shifts]
    centroid = [s["centroid_error"] for s in summaries[:-1]]
    survivals = [s["survival"] for s in summaries]
    assert _decreasing(centroid[::-1], strict=True) and _decreasing(survivals, strict=False)
    # Small shifts keep objects recognisably in place; a shift by more than two object sizes loses them.
    assert survivals[1] == 1.0 and survivals[-1] < 0.5
    assert summaries[1]["centroid_error"] == pytest.approx(1 / math.hypot(64, 64), rel=0.02)
    assert summaries[1]["psnr"] < PSNR_CAP_DB and summaries[1]["colour_error"] < 1e-6


def test_noise_and_speckles_are_not_objects() -> None:
    scene = sample_scene(4)
    truth = render(scene, 0, 20)
    rng = np.random.default_rng(0)
    noisy = np.clip(truth + rng.normal(0, 10, truth.shape), 0, 255).astype(np.uint8)
    # 2x2 blocks of every object colour scattered over the background: far smaller than any object.
    clear = ~shape_masks(scene, 0, 20).any(axis=0)
    for shape in scene.shapes:
        picks = np.zeros_like(clear)
        picks[:, ::8, ::8] = rng.random(picks[:, ::8, ::8].shape) < 0.05
        picks |= np.roll(picks, 1, axis=1) | np.roll(picks, 1, axis=2) | np.roll(picks, (1, 1), axis=(1, 2))
        noisy[picks & clear] = shape.rgb
    metrics = measure(noisy, scene, 0)
    assert np.all(metrics.count_error == 0) and np.nanmin(metrics.survival) == 1.0
    assert 0 < np.nanmean(metrics.colour_error) < 0.05
    assert 0 < np.mean(metrics.background_deviation) < 0.1


def test_softened_edges_are_not_background_drift() -> None:
    scene = sample_scene(5)
    truth = render(scene, 0, 10)
    # Every object one pixel fatter (drawn in order): only the ring around the true objects changes.
    fatter = truth.copy()
    for shape, mask in zip(scene.shapes, shape_masks(scene, 0, 10), strict=True):
        grown = mask.copy()
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown[:, :, 1:] |= mask[:, :, :-1]
        grown[:, :, :-1] |= mask[:, :, 1:]
        fatter[grown] = shape.rgb
    metrics = measure(fatter, scene, 0)
    assert np.all(metrics.background_deviation == 0.0) and np.all(metrics.psnr < PSNR_CAP_DB)
    # The same ring moved into the open background does count.
    stain = truth.copy()
    stain[:, 0, :] = scene.shapes[0].rgb
    assert np.all(measure(stain, scene, 0).background_deviation > 0.0)


def _repainted(scene_seed: int, shift: float) -> tuple[float, float]:
    """(survival, colour_error) at frame 0 with the first object repainted ``shift`` RGB units away from its
    colour, towards the nearest other palette colour (the way a drifting colour goes wrong)."""
    scene = sample_scene(scene_seed)
    first = scene.shapes[0]
    others = [np.array(rgb, float) for name, rgb in OBJECT_COLOURS.items() if name != first.colour]
    target = min(others, key=lambda rgb: np.linalg.norm(rgb - first.rgb))
    direction = (target - first.rgb) / np.linalg.norm(target - first.rgb)
    frames = render(scene, 0, 1)
    frames[0][np.all(frames[0] == first.rgb, axis=-1)] = np.rint(first.rgb + shift * direction).astype(np.uint8)
    metrics = measure(frames, scene, 0)
    return float(metrics.survival[0]), float(metrics.colour_error[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_colour_drift_past_the_threshold_loses_the_object(seed: int) -> None:
    kept, slightly_off = _repainted(seed, 30.0)
    lost, _ = _repainted(seed, 60.0)
    objects = len(sample_scene(seed).shapes)
    assert kept == 1.0 and slightly_off > 0
    assert lost == pytest.approx(1 - 1 / objects)


def test_duplicate_and_recoloured_objects() -> None:
    scene = sample_scene(1)  # two objects, apart at frame 0
    truth = render(scene, 0, 1)
    states = object_states(scene, 0)
    first = states[0]
    box = (slice(int(first.y - first.size), int(first.y + first.size) + 1),
           slice(int(first.x - first.size), int(first.x + first.size) + 1))
    # A copy of the first object's box pasted into the empty corner farthest from every object: one extra
    # object, nothing lost.
    duplicated = truth.copy()
    patch = truth[0][box]
    corner = max(((r, c) for r in (0, 64 - patch.shape[0]) for c in (0, 64 - patch.shape[1])),
                 key=lambda rc: min(math.hypot(rc[1] + 8 - s.x, rc[0] + 8 - s.y) for s in states))
    duplicated[0, corner[0]:corner[0] + patch.shape[0], corner[1]:corner[1] + patch.shape[1]] = patch
    metrics = measure(duplicated, scene, 0)
    assert metrics.count_error[0] == 1 and metrics.survival[0] == 1.0
    # The first object painted white (off the palette): lost, nothing else hurt.
    recoloured = truth.copy()
    recoloured[0][np.all(truth[0] == first.rgb, axis=-1)] = (255, 255, 255)
    metrics = measure(recoloured, scene, 0)
    assert metrics.survival[0] == pytest.approx(1 - 1 / len(states)) and metrics.count_error[0] == 1


def test_one_detection_matches_one_true_piece() -> None:
    # A circle over a slightly smaller square leaves four corner pieces of the square visible (a small third
    # object keeps the minimum area below a corner's). A generated frame drawing the square on top shows one
    # red object: it stands for one of the four pieces, not all of them.
    red = Shape("square", "red", OBJECT_COLOURS["red"], 10.0, 32.0, 32.0, 0.0, 0.0)
    blue = Shape("circle", "blue", OBJECT_COLOURS["blue"], 10.5, 32.0, 32.0, 0.0, 0.0)
    green = Shape("circle", "green", OBJECT_COLOURS["green"], 2.0, 8.0, 8.0, 0.0, 0.0)
    background = Background("plain", "gray", BACKGROUND_COLOURS["gray"])
    scene = Scene(64, 64, (red, blue, green), background)
    assert [d.colour for d in detect(render(scene, 0, 1)[0], scene)].count("red") == 4
    generated = render(Scene(64, 64, (blue, red, green), background), 0, 1)
    metrics = measure(generated, scene, 0)
    assert metrics.true_count[0] == 6 and metrics.count_error[0] == 4
    assert metrics.survival[0] == pytest.approx(2 / 6)  # one red piece and the green circle
    # The other way round: the square cut in two by a background stripe is still one surviving object, and
    # one extra detection.
    scene = Scene(64, 64, (red, green), background)
    cut = render(scene, 0, 1)
    cut[0, :, 31:33] = background.rgb
    metrics = measure(cut, scene, 0)
    assert metrics.survival[0] == 1.0 and metrics.count_error[0] == 1


def test_detect_reports_objects_at_their_states() -> None:
    offsets = []
    for seed in range(30):
        scene = sample_scene(seed)
        detections = detect(render(scene, 0, 1)[0], scene)
        assert sorted(d.colour for d in detections) == sorted(s.colour for s in scene.shapes)
        for state in object_states(scene, 0):
            found = next(d for d in detections if d.colour == state.colour)
            offsets.append((found.x - state.x, found.y - state.y))
            area = math.pi * state.size**2 if state.kind == "circle" else (2 * state.size) ** 2
            assert found.area == pytest.approx(area, rel=0.25)
            assert found.rgb == pytest.approx(state.rgb)
    # Centroids in the world's coordinates: within a pixel each, and unbiased.
    assert np.abs(offsets).max() < 1.0 and np.abs(np.mean(offsets, axis=0)).max() < 0.1


def test_works_at_other_frame_sizes() -> None:
    scene = sample_scene(3, WorldSpec(height=128, width=96, size_range=(6.0, 16.0)))
    metrics = measure(render(scene, 10, 12), scene, 10)
    assert np.all(metrics.count_error == 0) and np.all(metrics.psnr == PSNR_CAP_DB)


def test_measure_is_fast() -> None:
    scene = sample_scene(0, WorldSpec(backgrounds=("panning",)))
    frames = render(scene, 0, 100)
    measure(frames, scene, 0)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        measure(frames, scene, 0)
        best = min(best, time.perf_counter() - started)
    assert best < 0.3


def test_psnr_values() -> None:
    zeros = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert psnr(zeros, zeros) == PSNR_CAP_DB
    assert psnr(zeros, zeros + 1) == pytest.approx(10 * math.log10(255**2))
    assert psnr(zeros, zeros + 255) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(zeros, zeros[:1])


def test_temporal_flickering() -> None:
    static = np.repeat(render(sample_scene(0), 0, 1), 6, axis=0)
    assert temporal_flickering(static) == 1.0
    alternating = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    alternating[1::2] = 255
    assert temporal_flickering(alternating) == pytest.approx(0.0)
    steps = (np.arange(4)[:, None, None, None] * 51 * np.ones((1, 4, 4, 3))).astype(np.uint8)
    assert temporal_flickering(steps) == pytest.approx(0.8)
    moving = render(sample_scene(0), 0, 10)
    assert 0.9 < temporal_flickering(moving) < 1.0
    with pytest.raises(ValueError, match="2 frames"):
        temporal_flickering(static[:1])


def test_summarise_is_nan_aware() -> None:
    values = {"count_error": [0, 2], "survival": [1.0, np.nan], "colour_error": [np.nan, np.nan]}
    metrics = FrameMetrics(
        **{name: np.asarray(values.get(name, [1.0, 3.0]), dtype=float) for name in FrameMetrics.__dataclass_fields__}
    )
    summary = summarise(metrics)
    assert summary["count_error"] == 1.0 and summary["survival"] == 1.0 and summary["psnr"] == 2.0
    assert math.isnan(summary["colour_error"])
    assert set(summary) == set(FrameMetrics.__dataclass_fields__)


def test_bad_frames_are_named() -> None:
    scene = sample_scene(0)
    frames = render(scene, 0, 3)
    with pytest.raises(ValueError, match="frames"):
        measure(frames.astype(np.float32), scene, 0)
    with pytest.raises(ValueError, match="frames"):
        measure(frames[:, :32], scene, 0)
    with pytest.raises(ValueError, match="frames"):
        measure(frames[0], scene, 0)
    with pytest.raises(ValueError, match="start"):
        measure(frames, scene, -1)
    with pytest.raises(ValueError, match="frame"):
        detect(frames, scene)


def test_lost_objects_are_counted_once_each_as_survival_counts_them() -> None:
    for seed in SEEDS:
        scene = sample_scene(seed)
        truth, empty = render(scene, 9, 24), render_background(scene, 9, 24)
        kept, gone = lost_object_causes(truth, scene, 9), lost_object_causes(empty, scene, 9)
        assert set(kept) == set(LOSS_CAUSES) and all(counts["lost"] == 0 for counts in kept.values())
        assert all(counts["lost"] == counts["pairs"] for counts in gone.values()) and kept == {
            cause: {"pairs": counts["pairs"], "lost": 0} for cause, counts in gone.items()
        }
        metrics = measure(empty, scene, 9)
        lost = np.nansum((1 - metrics.survival) * metrics.true_count)
        assert sum(counts["lost"] for counts in gone.values()) == round(lost) == metrics.true_count.sum()
        assert describe_lost(gone).startswith(f"{round(lost)} of {round(lost)}; by class")


def test_a_lost_object_is_attributed_to_its_first_cause() -> None:
    background = Background("plain", "gray", BACKGROUND_COLOURS["gray"])

    def shape(colour: str, size: float, x: float, vx: float = 0.0, scale: str = "medium") -> Shape:
        return Shape("circle", colour, OBJECT_COLOURS[colour], size, x, 32.0, vx, 0.0, scale)

    def causes(*shapes: Shape) -> dict[str, int]:
        scene = Scene(64, 64, shapes, background)
        lost = lost_object_causes(render_background(scene, 9, 4), scene, 9)
        return {cause: counts["lost"] for cause, counts in lost.items()}

    # Two still circles 1 px apart (in contact) and a small one alone: every frame loses all three.
    assert causes(shape("red", 6, 14), shape("blue", 6, 27), shape("green", 3, 50, scale="small")) == {
        "after_contact": 8, "after_bounce": 0, "small": 4, "other": 0
    }
    # A circle that touched the border at frame 0 and moves away from it still counts as after a bounce; a
    # medium one that never touched anything is plainly lost.
    assert causes(shape("red", 6, 6, vx=1.0), shape("blue", 6, 40)) == {
        "after_contact": 0, "after_bounce": 4, "small": 0, "other": 4
    }
    # Contact comes first: a small circle in contact with another counts as after contact, not as small.
    assert causes(shape("red", 3, 20, scale="small"), shape("blue", 6, 30))["after_contact"] == 8
