"""The lab world: the truth it reports is the truth it renders, deterministically, with honest captions."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, replace

import numpy as np
import pytest

from drift_lab.measure import lost_object_causes
from drift_lab.world import (
    BACKGROUND_KINDS,
    MAX_CAPTION_WORDS,
    SIZE_CLASSES,
    VOCABULARY,
    Background,
    Look,
    ObjectState,
    Scene,
    Shape,
    WorldSpec,
    object_states,
    parse_caption,
    render,
    render_background,
    sample_scene,
    scene_from_caption,
    shape_masks,
)

SEEDS = range(40)
FRAMES = (0, 1, 7, 33, 100, 1234, 98765)


def _covers(state: ObjectState, x: float, y: float) -> bool:
    """Independent point-in-shape test (pixel centre at (x, y))."""
    if state.kind == "circle":
        return math.hypot(x - state.x, y - state.y) <= state.size
    return abs(x - state.x) <= state.size and abs(y - state.y) <= state.size


def _step_simulation(shape: Shape, width: int, height: int, frames: int) -> list[tuple[float, float]]:
    """Frame-by-frame reference simulation with elastic wall reflection (the closed form must agree)."""
    x, y, vx, vy = shape.x, shape.y, shape.vx, shape.vy
    path = [(x, y)]
    for _ in range(frames - 1):
        x, y = x + vx, y + vy
        if x < shape.size or x > width - shape.size:
            wall = shape.size if x < shape.size else width - shape.size
            x, vx = 2 * wall - x, -vx
        if y < shape.size or y > height - shape.size:
            wall = shape.size if y < shape.size else height - shape.size
            y, vy = 2 * wall - y, -vy
        path.append((x, y))
    return path


@pytest.mark.parametrize("seed", SEEDS)
def test_centre_pixel_has_object_colour_unless_covered_later(seed: int) -> None:
    scene = sample_scene(seed)
    for frame in FRAMES:
        image = render(scene, frame, 1)[0]
        states = object_states(scene, frame)
        for state in states:
            column, row = int(state.x), int(state.y)
            covered_later = any(_covers(other, column + 0.5, row + 0.5) for other in states[state.index + 1 :])
            if not covered_later:
                assert tuple(image[row, column]) == state.rgb, (seed, frame, state)


def test_rendered_centroid_matches_state() -> None:
    offsets = []
    for seed in SEEDS:
        scene = sample_scene(seed)
        for frame in FRAMES:
            image = render(scene, frame, 1)[0]
            states = object_states(scene, frame)
            for state in states:
                others = [o for o in states if o.index != state.index]
                # Only objects clear of every other object: occluded ones have a shifted visible centroid.
                if any(math.hypot(o.x - state.x, o.y - state.y) < (o.size + state.size) * math.sqrt(2) for o in others):
                    continue
                rows, columns = np.nonzero(np.all(image == state.rgb, axis=-1))
                offsets.append((columns.mean() + 0.5 - state.x, rows.mean() + 0.5 - state.y))
    offsets_array = np.array(offsets)
    assert len(offsets) > 100
    # Each centroid within a pixel (rasterisation), and no systematic offset (e.g. a half-pixel convention slip).
    assert np.abs(offsets_array).max() < 1.0
    assert np.abs(offsets_array.mean(axis=0)).max() < 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_objects_stay_inside_and_reflect_at_walls(seed: int) -> None:
    scene = sample_scene(seed)
    frames = 300
    for shape in scene.shapes:
        path = _step_simulation(shape, scene.width, scene.height, frames)
        previous = None
        for frame, (x, y) in enumerate(path):
            state = object_states(scene, frame)[scene.shapes.index(shape)]
            assert state.x == pytest.approx(x, abs=1e-6) and state.y == pytest.approx(y, abs=1e-6)
            assert shape.size <= state.x <= scene.width - shape.size
            assert shape.size <= state.y <= scene.height - shape.size
            if previous is not None:
                dx, dy = state.x - previous.x, state.y - previous.y
                # Between bounces the displacement is exactly +-v; across a bounce it is shorter.
                assert abs(dx) <= abs(shape.vx) + 1e-9 and abs(dy) <= abs(shape.vy) + 1e-9
                near_x_wall = min(state.x, previous.x) - shape.size < abs(shape.vx) or (
                    scene.width - shape.size - max(state.x, previous.x) < abs(shape.vx)
                )
                if not near_x_wall:
                    assert abs(dx) == pytest.approx(abs(shape.vx), abs=1e-9)
            previous = state


def test_far_frames_stay_inside() -> None:
    for seed in SEEDS:
        scene = sample_scene(seed)
        for frame in (10**6, 10**9 + 7):
            for state in object_states(scene, frame):
                assert state.size <= state.x <= scene.width - state.size
                assert state.size <= state.y <= scene.height - state.size


def test_objects_apart_at_frame_zero_and_distinct_colours() -> None:
    for seed in range(200):
        scene = sample_scene(seed)
        masks = shape_masks(scene, 0, 1)[:, 0]
        assert masks.sum(axis=0).max() <= 1, seed
        colours = [shape.colour for shape in scene.shapes]
        assert len(set(colours)) == len(colours)
        assert scene.background.rgb not in [shape.rgb for shape in scene.shapes]


def test_sampling_is_deterministic_and_independent_of_global_rng() -> None:
    np.random.seed(1)
    first = [sample_scene(seed) for seed in SEEDS]
    np.random.seed(2)
    np.random.random(100)
    second = [sample_scene(seed) for seed in SEEDS]
    assert first == second
    assert len({scene.caption for scene in first}) > len(first) // 2
    assert np.array_equal(render(first[3], 5, 10), render(second[3], 5, 10))
    # A window of a longer render is the same as rendering that window alone.
    assert np.array_equal(render(first[4], 0, 30)[12:20], render(first[4], 12, 8))


def test_counts_and_background_kinds_follow_spec() -> None:
    spec = WorldSpec(min_objects=2, max_objects=2, backgrounds=("panning",))
    for seed in range(30):
        scene = sample_scene(seed, spec)
        assert len(scene.shapes) == 2 and scene.background.kind == "panning"
        assert scene.background.pan != (0.0, 0.0)
    counts = {len(sample_scene(seed).shapes) for seed in range(100)}
    kinds = {sample_scene(seed).background.kind for seed in range(100)}
    assert counts == {1, 2, 3} and kinds == set(BACKGROUND_KINDS)


@pytest.mark.parametrize("seed", range(200))
def test_caption_describes_what_is_visible(seed: int) -> None:
    scene = sample_scene(seed)
    words = scene.caption.split(" ")
    assert set(words) <= set(VOCABULARY) and len(words) <= MAX_CAPTION_WORDS
    assert scene.caption == scene.caption.strip().lower() and "" not in words
    for shape in scene.shapes:
        size = {"small": "small ", "medium": "", "large": "large "}[shape.scale]
        assert f" {size}{shape.colour} {shape.kind}" in f" {scene.caption}"
    assert scene.caption.count(" and ") == len(scene.shapes) - 1
    assert words[-2:] == [scene.background.colour, "background"]
    assert ("panning" in words) == (scene.background.kind == "panning")
    assert ("textured" in words) == (scene.background.kind != "plain")


def test_vocabulary_is_used_and_unique() -> None:
    used = {word for seed in range(1000) for word in sample_scene(seed).caption.split(" ")}
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert used == set(VOCABULARY)


def test_size_classes_are_visible() -> None:
    spec = WorldSpec()
    low, high = spec.size_range
    for seed in range(100):
        for shape in sample_scene(seed, spec).shapes:
            fraction = (shape.size - low) / (high - low)
            # Classes are separated by gaps, so the caption's size word is never a borderline call.
            bounds = {"small": (0.0, 0.25), "medium": (0.375, 0.625), "large": (0.75, 1.0)}[shape.scale]
            assert bounds[0] <= fraction <= bounds[1], (seed, shape)


def test_backgrounds() -> None:
    textured = next(s for s in map(sample_scene, range(100)) if s.background.kind == "texture")
    clip = render_background(textured, 0, 5).astype(int)
    assert np.array_equal(clip[0], clip[4]), "a static texture must not move"
    deviation = np.abs(clip[0] - np.array(textured.background.rgb))
    assert 0 < deviation.max() <= textured.background.amplitude + 1, "texture must be low-contrast but present"
    plain = next(s for s in map(sample_scene, range(100)) if s.background.kind == "plain")
    assert np.all(render_background(plain, 3, 2) == np.array(plain.background.rgb, dtype=np.uint8))


def test_panning_translates_and_wraps() -> None:
    base = next(s for s in map(sample_scene, range(100)) if s.background.kind == "panning")
    # Whole-pixel pan: frame t + 1 is frame t rolled by (2, -1) px, content leaving one edge re-entering the other.
    scene = replace(base, background=replace(base.background, pan=(2.0, -1.0)))
    clip = render_background(scene, 10, 2).astype(int)
    assert np.abs(clip[1] - np.roll(clip[0], shift=(-1, 2), axis=(0, 1))).max() <= 1
    assert not np.array_equal(clip[0], clip[1])


def test_shapes_are_drawn_in_index_order() -> None:
    first = Shape("square", "red", (215, 35, 45), 6.0, 20.0, 20.0, 0.0, 0.0)
    second = Shape("circle", "blue", (45, 75, 225), 4.0, 22.0, 20.0, 0.0, 0.0)
    scene = Scene(64, 64, (first, second), Background("plain", "gray", (128, 128, 128)))
    image = render(scene, 0, 1)[0]
    assert tuple(image[19, 21]) == second.rgb and tuple(image[19, 15]) == first.rgb


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (48, 80)])
def test_render_shapes_and_speed(size: tuple[int, int]) -> None:
    height, width = size
    scene = sample_scene(7, WorldSpec(height=height, width=width))
    assert render(scene, 0, 3).shape == (3, height, width, 3)
    assert render(scene, 0, 0).shape == (0, height, width, 3)
    if size == (64, 64):
        panning = sample_scene(0, WorldSpec(backgrounds=("panning",)))
        started = time.perf_counter()
        video = render(panning, 0, 100)
        assert time.perf_counter() - started < 0.5
        assert video.dtype == np.uint8 and video.shape == (100, 64, 64, 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"height": 8}, "height"),
        ({"width": 64.0}, "width"),
        ({"min_objects": 0}, "min_objects"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"max_objects": 4}, "max_objects"),
        ({"backgrounds": ()}, "backgrounds"),
        ({"backgrounds": ("plain", "stripes")}, "backgrounds"),
        ({"size_range": (1.0, 4.0)}, "size_range"),
        ({"size_range": (9.0, 4.0)}, "size_range"),
        ({"size_range": (4.0, 20.0)}, "size_range"),
        ({"speed_range": (-1.0, 1.0)}, "speed_range"),
        ({"pan_speed_range": (0.5, math.nan)}, "pan_speed_range"),
        ({"lanes": 1}, "lanes"),
        # Three rows of 20-px objects do not fit a 64-px frame.
        ({"lanes": True}, "size_range"),
    ],
)
def test_spec_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WorldSpec(**kwargs)


def test_spec_survives_a_json_round_trip() -> None:
    spec = WorldSpec(height=48, width=80, size_range=(3.0, 8.0))
    restored = WorldSpec(**json.loads(json.dumps(asdict(spec))))
    assert restored == spec and hash(restored) == hash(spec)
    assert sample_scene(5, restored) == sample_scene(5, spec)
    with pytest.raises(ValueError, match="backgrounds"):
        WorldSpec(backgrounds="plain")


def test_bad_arguments_name_the_argument() -> None:
    scene = sample_scene(0)
    with pytest.raises(ValueError, match="start"):
        render(scene, -1, 2)
    with pytest.raises(ValueError, match="count"):
        render(scene, 0, -2)
    with pytest.raises(ValueError, match="start"):
        object_states(scene, -3)
    with pytest.raises(ValueError, match="seed"):
        sample_scene(-1)
    with pytest.raises(ValueError, match="kind"):
        Shape("triangle", "red", (215, 35, 45), 5.0, 10.0, 10.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="pan"):
        Background("texture", "gray", (128, 128, 128), 10.0, ((1, 1, 0.0),), pan=(1.0, 0.0))


LANES = WorldSpec(lanes=True, size_range=(4.0, 8.0))


@pytest.mark.parametrize("seed", range(60))
def test_objects_in_lanes_never_touch(seed: int) -> None:
    scene = sample_scene(seed, LANES)
    assert all(shape.vy == 0.0 and LANES.speed_range[0] <= abs(shape.vx) <= LANES.speed_range[1]
               for shape in scene.shapes)  # fmt: skip
    # The lab's own contact test (within CONTACT_GAP_PX of another object, in the truth) never fires, and with
    # nothing hidden every object is found in every true frame.
    causes = lost_object_causes(render(scene, 0, 400), scene, 0)
    assert causes["after_contact"]["pairs"] == 0
    assert sum(counts["pairs"] for counts in causes.values()) == 400 * len(scene.shapes)


def test_lanes_follow_the_spec_and_use_the_whole_height() -> None:
    scenes = [sample_scene(seed, LANES) for seed in range(300)]
    assert {len(scene.shapes) for scene in scenes} == {1, 2, 3}
    tops = [min(s.y - s.size for s in scene.shapes) for scene in scenes]
    bottoms = [max(s.y + s.size for s in scene.shapes) for scene in scenes]
    assert min(tops) >= 0 and max(bottoms) <= LANES.height
    # The free height is shared out at random: rows start near the top and near the bottom.
    assert min(tops) < 2 and max(bottoms) > LANES.height - 2
    assert {scene.shapes[0].vx > 0 for scene in scenes} == {True, False}


def test_lanes_are_written_only_when_set() -> None:
    # Records of world-v1 (models, checkpoints, pool keys) predate lanes and must name the same world.
    assert "lanes" not in WorldSpec().as_dict() and WorldSpec().as_dict()["size_range"] == [4.0, 10.0]
    values = LANES.as_dict()
    assert values["lanes"] is True
    assert WorldSpec(**json.loads(json.dumps(values))) == LANES


@pytest.mark.parametrize("spec", [WorldSpec(), LANES], ids=["free", "lanes"])
def test_a_scene_from_a_caption_shows_what_it_names(spec: WorldSpec) -> None:
    for seed in range(200):
        caption = sample_scene(seed, spec).caption
        scene = scene_from_caption(caption.upper().replace(" ", "  "), seed + 1, spec)  # case and spacing are free
        assert scene.caption == caption
        # Sizes within their class, placed as the world places objects (apart, or in rows).
        for shape in scene.shapes:
            low, high = SIZE_CLASSES[shape.scale]
            span = spec.size_range[1] - spec.size_range[0]
            assert spec.size_range[0] + low * span <= shape.size <= spec.size_range[0] + high * span
        if spec.lanes:
            assert all(shape.vy == 0.0 for shape in scene.shapes)
        # What the caption leaves open is drawn from the seed.
        assert scene_from_caption(caption, seed + 1, spec) == scene != scene_from_caption(caption, seed + 2, spec)


def test_parse_caption_reads_the_grammar() -> None:
    content = parse_caption("a red circle and a small blue square bouncing over a panning textured slate background")
    assert content.objects == (Look("red", "circle"), Look("blue", "square", "small"))
    assert (content.background_kind, content.background_colour) == ("panning", "slate")
    assert parse_caption("an orange square bouncing on a textured beige background").background_kind == "texture"


@pytest.mark.parametrize(
    ("caption", "named"),
    [
        ("a red circle", "bouncing"),
        ("a purple circle bouncing on a plain gray background", "'a purple circle'"),
        ("a medium red circle bouncing on a plain gray background", "'a medium red circle'"),
        ("a red circle and a red square bouncing on a plain gray background", "colour twice"),
        ("a red circle bouncing on a plain gray backdrop", "<colour> background"),
        ("a red circle bouncing on a plain pink background", "gray, brown, beige, slate"),
        ("bouncing on a plain gray background", "must read 'a [small|large]"),
        ("a red circle and a blue circle and a green circle and a cyan circle bouncing on a plain gray background",
         "more than 3"),
    ],
)
def test_a_caption_outside_the_grammar_is_refused_naming_the_word(caption: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        parse_caption(caption)


def test_a_caption_the_world_cannot_show_is_refused() -> None:
    plain_only = WorldSpec(backgrounds=("plain",), max_objects=2)
    with pytest.raises(ValueError, match="only plain backgrounds"):
        scene_from_caption("a red circle bouncing on a textured gray background", 0, plain_only)
    with pytest.raises(ValueError, match="names 3 objects; this world shows 1 to 2"):
        scene_from_caption("a red circle and a blue circle and a cyan square bouncing on a plain gray background",
                           0, plain_only)
