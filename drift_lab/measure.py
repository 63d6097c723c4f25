"""Drift measurements: how far a generated clip of a lab scene is from the scene's truth, frame by frame.

Objects are found by colour segmentation against the scene's palette and connected components. The same
detection runs on the true render and on the generated frames, so occlusion is handled identically: an
object (strictly, each visible piece of one) counts as truly present in a frame iff it is detected in the
true render, and a perfect clip scores perfectly even where objects overlap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from drift_lab.world import BACKGROUND_COLOURS, OBJECT_COLOURS, Scene, render, render_background, shape_masks


def _palette_spacing() -> float:
    """Smallest RGB distance between two object colours or between an object and a background colour."""
    objects = list(OBJECT_COLOURS.values())
    pairs = [*itertools.combinations(objects, 2), *itertools.product(objects, BACKGROUND_COLOURS.values())]
    return min(math.dist(a, b) for a, b in pairs)


# A pixel is an object's colour only if that colour is the nearest of the scene's palette (its objects and
# its background) AND within half the palette's smallest spacing (~49 RGB units). The second condition means
# no other palette colour, in this scene or not, can be as close: an object drifting from red to orange stops
# counting as red, and off-palette artifacts (black, white, mud) count as nothing.
COLOUR_THRESHOLD = _palette_spacing() / 2
# Components smaller than this fraction of the scene's smallest object area are noise, not objects: speckles
# of a palette colour in a generated frame must not count as duplicates. A quarter keeps a mostly occluded
# object visible (it is judged the same way in the truth).
MIN_AREA_FRACTION = 0.25
# A true object survives if a detection of its colour lies within this many object sizes (radius / half
# side) of its true centroid: one object diameter, i.e. still recognisably the same object in about the
# right place, while an object that jumped elsewhere or a lone same-coloured smear is not.
SURVIVAL_RADIUS_SIZES = 2.0
# Objects (or an object and the frame's border, where it bounces) this close count as in contact when a lost
# object is attributed to its likeliest cause (lost_object_causes).
CONTACT_GAP_PX = 2
# The causes a lost object is attributed to, in priority order (the first that applies).
LOSS_CAUSES: tuple[str, ...] = ("after_contact", "after_bounce", "small", "other")
# Ignore this many pixels around every true object for background_deviation: a good decoder softens edges,
# which is not background drift.
BACKGROUND_MARGIN_PX = 1
# Largest RGB distance: normalises colour_error to [0, 1].
RGB_DIAGONAL = 255 * math.sqrt(3)
# PSNR of identical frames is infinite; report this instead so means and plots stay finite.
PSNR_CAP_DB = 100.0
# 4-connectivity within a frame, none across frames: label a whole clip [T, H, W] in one call.
_FRAME_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_FRAME_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Detection:
    """One connected component of one palette colour (centroid in the world's pixel coordinates)."""

    colour: str
    area: int
    x: float
    y: float
    rgb: tuple[float, float, float]


@dataclass
class FrameMetrics:
    """One value per frame for each measurement (see the module constants for thresholds)."""

    count_error: np.ndarray
    """|detected components - true components|."""
    survival: np.ndarray
    """Fraction of true objects matched by a detection of their colour near their true centroid; NaN when the
    truth shows none (every object hidden)."""
    colour_error: np.ndarray
    """Mean over matched objects of |detected mean rgb - true rgb| / (255 sqrt 3), in [0, 1]; NaN if none."""
    centroid_error: np.ndarray
    """Mean over matched objects of the centroid distance / frame diagonal; NaN if none."""
    background_deviation: np.ndarray
    """Mean absolute error / 255 on pixels clear of every true object (by BACKGROUND_MARGIN_PX)."""
    psnr: np.ndarray
    """dB against the true frames, capped at PSNR_CAP_DB."""
    psnr_background_floor: np.ndarray
    """dB of the background-only render against the true frames: what dropping every object scores."""
    true_count: np.ndarray
    """Objects detected in the true render (the denominator of survival)."""


def _check_frames(frames: np.ndarray, name: str, scene: Scene | None = None) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 numpy array, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} must have shape [T>=1, H, W, 3], got {frames.shape}")
    if scene is not None and frames.shape[1:3] != (scene.height, scene.width):
        raise ValueError(f"{name} is {frames.shape[1]}x{frames.shape[2]}, the scene {scene.height}x{scene.width}")


def _min_area(scene: Scene) -> float:
    areas = [math.pi * s.size**2 if s.kind == "circle" else (2 * s.size) ** 2 for s in scene.shapes]
    return MIN_AREA_FRACTION * min(areas, default=0.0)


def _sum_per_label(labels: np.ndarray, count: int, weights: np.ndarray | None) -> np.ndarray:
    """Sum of ``weights`` (or the pixel count) over each of labels 1..count."""
    return np.bincount(labels, weights=weights, minlength=count + 1)[1:]


def _detect_clip(frames: np.ndarray, scene: Scene) -> list[list[Detection]]:
    """Detections per frame of a clip ``[T, H, W, 3]`` (vectorised over frames)."""
    palette = np.array([*(shape.rgb for shape in scene.shapes), scene.background.rgb], dtype=np.float32)
    # Channel planes, not an [..., 3] axis: numpy reduces a length-3 last axis an order of magnitude slower.
    channels = [frames[..., c].astype(np.float32) for c in range(3)]
    distances = np.stack([sum(np.square(channels[c] - colour[c]) for c in range(3)) for colour in palette])
    nearest = distances.argmin(axis=0)
    classes = np.where(distances.min(axis=0) <= COLOUR_THRESHOLD**2, nearest, -1)
    minimum = _min_area(scene)
    found: list[list[Detection]] = [[] for _ in range(frames.shape[0])]
    for index, shape in enumerate(scene.shapes):
        labels, count = ndimage.label(classes == index, structure=_FRAME_STRUCTURE)
        if count == 0:
            continue
        # Only labelled pixels matter: gather them once instead of summing over the whole clip.
        where = np.flatnonzero(labels)
        owner = labels.ravel()[where]
        frame, row, column = np.unravel_index(where, labels.shape)
        area = _sum_per_label(owner, count, None)
        frame_of = (_sum_per_label(owner, count, frame) / area).round().astype(int)
        x = _sum_per_label(owner, count, column + 0.5) / area
        y = _sum_per_label(owner, count, row + 0.5) / area
        rgb = np.stack([_sum_per_label(owner, count, channels[c].ravel()[where]) for c in range(3)], axis=-1)
        rgb /= area[:, None]
        for label in np.flatnonzero(area >= minimum):
            mean_rgb = (float(rgb[label, 0]), float(rgb[label, 1]), float(rgb[label, 2]))
            detection = Detection(shape.colour, int(area[label]), float(x[label]), float(y[label]), mean_rgb)
            found[frame_of[label]].append(detection)
    return found


def detect(frame: np.ndarray, scene: Scene) -> list[Detection]:
    """The objects visible in one frame ``[H, W, 3]`` uint8 of ``scene`` (or a generated imitation of it)."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ValueError(f"frame must be a numpy array [H, W, 3], got {getattr(frame, 'shape', type(frame))}")
    _check_frames(frame[None], "frame", scene)
    return _detect_clip(frame[None], scene)[0]


def _match(
    truth: list[Detection], generated: list[Detection], radius: dict[str, float]
) -> list[tuple[Detection, Detection]]:
    """One-to-one pairs (true, generated) of the same colour within the survival radius, closest first."""
    candidates = sorted(
        (math.dist((t.x, t.y), (g.x, g.y)), i, j)
        for (i, t), (j, g) in itertools.product(enumerate(truth), enumerate(generated))
        if t.colour == g.colour
    )
    used_true: set[int] = set()
    used_generated: set[int] = set()
    pairs = []
    for distance, i, j in candidates:
        if distance <= radius[truth[i].colour] and i not in used_true and j not in used_generated:
            used_true.add(i)
            used_generated.add(j)
            pairs.append((truth[i], generated[j]))
    return pairs


def _psnr_db(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / mse), PSNR_CAP_DB)


def _per_frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.square(a.astype(np.float64) - b.astype(np.float64)).reshape(a.shape[0], -1).mean(axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of the same shape (255 peak), capped at PSNR_CAP_DB."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {a.shape} vs {b.shape}")
    return float(_psnr_db(_per_frame_mse(a[None], b[None]))[0])


def measure(frames: np.ndarray, scene: Scene, start: int) -> FrameMetrics:
    """Compare ``frames`` (uint8 ``[T, H, W, 3]``) with ``render(scene, start, T)``, frame by frame."""
    _check_frames(frames, "frames", scene)
    count = frames.shape[0]
    truth = render(scene, start, count)
    true_detections = _detect_clip(truth, scene)
    generated_detections = _detect_clip(frames, scene)
    radius = {shape.colour: SURVIVAL_RADIUS_SIZES * shape.size for shape in scene.shapes}
    true_rgb = {shape.colour: shape.rgb for shape in scene.shapes}
    diagonal = math.hypot(scene.height, scene.width)

    count_error, survival, colour_error, centroid_error, true_count = (np.full(count, np.nan) for _ in range(5))
    for index, (expected, observed) in enumerate(zip(true_detections, generated_detections, strict=True)):
        pairs = _match(expected, observed, radius)
        true_count[index] = len(expected)
        count_error[index] = abs(len(observed) - len(expected))
        if expected:
            survival[index] = len(pairs) / len(expected)
        if pairs:
            colour_error[index] = np.mean([math.dist(g.rgb, true_rgb[t.colour]) for t, g in pairs]) / RGB_DIAGONAL
            centroid_error[index] = np.mean([math.dist((t.x, t.y), (g.x, g.y)) for t, g in pairs]) / diagonal

    covered = shape_masks(scene, start, count).any(axis=0)
    if BACKGROUND_MARGIN_PX:
        covered = ndimage.binary_dilation(covered, structure=_FRAME_STRUCTURE, iterations=BACKGROUND_MARGIN_PX)
    clear = ~covered
    error = sum(np.abs(frames[..., c].astype(np.float32) - truth[..., c]) for c in range(3)) / (3 * 255.0)
    with np.errstate(invalid="ignore"):
        background_deviation = (error * clear).reshape(count, -1).sum(axis=1) / clear.reshape(count, -1).sum(axis=1)

    return FrameMetrics(
        count_error=count_error,
        survival=survival,
        colour_error=colour_error,
        centroid_error=centroid_error,
        background_deviation=background_deviation,
        psnr=_psnr_db(_per_frame_mse(frames, truth)),
        psnr_background_floor=_psnr_db(_per_frame_mse(render_background(scene, start, count), truth)),
        true_count=true_count,
    )


def lost_object_causes(frames: np.ndarray, scene: Scene, start: int) -> dict[str, dict[str, int]]:
    """Why the true objects that ``frames`` (uint8 ``[T, H, W, 3]``, frames ``start..``) fail to show were lost:
    every true (object, frame) pair survival counts, classed by the first of these that applies to it, and
    per class ``{"pairs": how many, "lost": how many of them survival counts as lost}``.

    * ``after_contact``: the object had touched or overlapped another object (within CONTACT_GAP_PX, in the truth)
      at some frame from 0 to this one: occlusion and merging;
    * ``after_bounce``: it had touched the frame's border (bounced) at some frame from 0 to this one;
    * ``small``: it is of the "small" size class;
    * ``other``: none of these.

    The ``lost`` counts add up to ``(1 - survival) * true_count`` summed over frames; against ``pairs`` they
    read as a loss rate per class: interactions the model does not follow, or plain forgetting.
    """
    _check_frames(frames, "frames", scene)
    count = frames.shape[0]
    masks = shape_masks(scene, 0, start + count)  # from frame 0: a contact before the rollout counts too
    near = ndimage.binary_dilation(
        masks, structure=np.ones((1, 1, 2 * CONTACT_GAP_PX + 1, 2 * CONTACT_GAP_PX + 1), dtype=bool)
    )
    others = [np.delete(masks, index, axis=0).any(axis=0) for index in range(len(scene.shapes))]
    contact = np.stack([(near[index] & others[index]).any(axis=(1, 2)) for index in range(len(scene.shapes))])
    border = np.ones((scene.height, scene.width), dtype=bool)
    border[CONTACT_GAP_PX:-CONTACT_GAP_PX, CONTACT_GAP_PX:-CONTACT_GAP_PX] = False
    bounce = (masks & border).any(axis=(2, 3))
    # "Had touched by frame f": running maxima over frames.
    contact, bounce = np.maximum.accumulate(contact, axis=1), np.maximum.accumulate(bounce, axis=1)

    index = {shape.colour: number for number, shape in enumerate(scene.shapes)}
    radius = {shape.colour: SURVIVAL_RADIUS_SIZES * shape.size for shape in scene.shapes}
    causes = {cause: {"pairs": 0, "lost": 0} for cause in LOSS_CAUSES}
    true_detections = _detect_clip(render(scene, start, count), scene)
    for frame, (expected, observed) in enumerate(zip(true_detections, _detect_clip(frames, scene), strict=True)):
        found = {id(true) for true, _ in _match(expected, observed, radius)}
        for true in expected:
            number = index[true.colour]
            if contact[number, start + frame]:
                cause = "after_contact"
            elif bounce[number, start + frame]:
                cause = "after_bounce"
            else:
                cause = "small" if scene.shapes[number].scale == "small" else "other"
            causes[cause]["pairs"] += 1
            causes[cause]["lost"] += id(true) not in found
    return causes


def describe_lost(lost: Mapping[str, Mapping[str, int]]) -> str:
    """:func:`lost_object_causes`' counts (or their sums over rollouts) in words: the lost pairs of all pairs,
    then of each class."""
    total = {name: sum(counts[name] for counts in lost.values()) for name in ("lost", "pairs")}
    classes = ", ".join(f"{cause.replace('_', ' ')} {c['lost']}/{c['pairs']}" for cause, c in lost.items())
    return f"{total['lost']} of {total['pairs']}; by class, lost/pairs: {classes}"


def summarise(metrics: FrameMetrics) -> dict[str, float]:
    """Mean of every measurement over frames, ignoring NaN (NaN only where every frame is NaN)."""
    summary = {}
    for item in fields(metrics):
        values = np.asarray(getattr(metrics, item.name), dtype=np.float64)
        finite = values[~np.isnan(values)]
        summary[item.name] = float(finite.mean()) if finite.size else math.nan
    return summary


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's Temporal Flickering: mean over consecutive frame pairs of (255 - mean |difference|) / 255.
    1.0 for a static clip, ~0 for frames alternating between black and white."""
    _check_frames(frames, "frames")
    if frames.shape[0] < 2:
        raise ValueError(f"frames must hold at least 2 frames for temporal_flickering, got {frames.shape[0]}")
    differences = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(frames.shape[0] - 1, -1).mean(axis=1)
    return float(np.mean((255.0 - differences) / 255.0))
