"""The lab's procedural world: flat-coloured circles and squares bouncing on plain, textured or panning
backgrounds, with the truth (every object's position at every frame) known in closed form. Objects move in any
direction and pass over one another, or, in a world with ``lanes``, sideways in rows of their own.

A video model trained on this world can only drift in ways the measurements in ``drift_lab.measure`` see:
objects fading, changing colour, duplicating or wandering off their true path, and the background gaining
artifacts. The palette keeps object colours saturated and far apart and backgrounds desaturated, so that
nearest-colour segmentation finds every object reliably.

Coordinates are continuous pixels: pixel column ``j`` spans ``[j, j + 1)`` with its centre at ``j + 0.5``
(rows likewise), so a shape centred at ``(x, y)`` covers the pixels whose centres lie inside it and their
centroid is ``(x, y)`` up to rasterisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

# Bump whenever rendering or sampling changes: trained models record it, and a model trained on another
# version of the world must not be evaluated against this one.
DATA_VERSION = "world-v1"

# Saturated object colours. The closest pair (orange/yellow) is ~98 RGB units apart and every object colour
# is >= ~110 from every background colour, so a pixel within half the closest distance of a palette colour
# can belong to nothing else (see measure.COLOUR_THRESHOLD).
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 45),
    "orange": (245, 130, 20),
    "yellow": (230, 225, 40),
    "green": (40, 190, 60),
    "cyan": (40, 200, 215),
    "blue": (45, 75, 225),
    "magenta": (210, 50, 200),
}
# Desaturated background colours, >= ~50 units apart so the caption's colour word is visible.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "brown": (125, 95, 70),
    "beige": (175, 165, 140),
    "slate": (85, 100, 125),
}
SHAPE_KINDS: tuple[str, ...] = ("circle", "square")
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "texture", "panning")

# Size classes as fractions of WorldSpec.size_range. The gaps between classes keep a caption's size word
# visibly true; "medium" is the unmarked size (no word in the caption).
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "small": (0.0, 0.25),
    "medium": (0.375, 0.625),
    "large": (0.75, 1.0),
}
SIZE_WORDS: dict[str, str] = {"small": "small", "medium": "", "large": "large"}
MOTION_WORD = "bouncing"

# Texture: a few plane waves with integer wave numbers per frame width/height, so the pattern is periodic
# over the frame and a panning texture wraps exactly. Amplitudes are low so backgrounds stay low-contrast
# (at most ~28 RGB units from the base colour, far from every object colour).
TEXTURE_WAVES = 3
TEXTURE_MAX_WAVE_NUMBER = 5
TEXTURE_AMPLITUDE_RANGE = (8.0, 16.0)

# Objects start at least this many pixels apart, so every object is fully visible at frame 0.
START_GAP_PX = 2.0
# Rows of a world with lanes are this many pixels apart: more than twice measure.CONTACT_GAP_PX, so that no two
# objects ever count as in contact.
LANE_GAP_PX = 5.0
PLACEMENT_ATTEMPTS = 1000
# Captions are at most this many words: the text encoder's length in the lab presets is budgeted on it.
MAX_CAPTION_WORDS = 24
# Three objects of four words plus "and"s, the motion word and the longest background phrase fill 21 words;
# a fourth object would break MAX_CAPTION_WORDS.
MAX_OBJECTS = 3


@dataclass(frozen=True)
class WorldSpec:
    """What ``sample_scene`` may draw: frame size, object count, background kinds, sizes and speeds (px)."""

    height: int = 64
    width: int = 64
    min_objects: int = 1
    max_objects: int = 3
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    size_range: tuple[float, float] = (4.0, 10.0)
    """Radius of a circle / half side of a square, px."""
    speed_range: tuple[float, float] = (0.5, 1.5)
    """Object speed, px per frame (the direction is uniform)."""
    pan_speed_range: tuple[float, float] = (0.25, 1.0)
    """Speed of a panning background, px per frame."""
    lanes: bool = False
    """Each object moves horizontally in a row of its own, the rows LANE_GAP_PX apart, so objects never touch
    or hide one another (a speed from ``speed_range``, leftwards or rightwards); otherwise objects move in any
    direction and pass over one another. Rows exist because the CPU lab's transformers could not learn
    occlusion (issue #15: after two objects overlapped, one of them was lost in a quarter of the frames)."""

    def __post_init__(self) -> None:
        # Specs come back from JSON (training metadata) with lists: store tuples so specs compare and hash.
        for name in ("backgrounds", "size_range", "speed_range", "pan_speed_range"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ValueError(f"WorldSpec.{name} must be a tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 16:
                raise ValueError(f"WorldSpec.{name} must be an int >= 16, got {value!r}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"WorldSpec.min_objects must be in [1, max_objects={self.max_objects}], got {self.min_objects}"
            )
        if self.max_objects > MAX_OBJECTS:
            raise ValueError(
                f"WorldSpec.max_objects must be <= {MAX_OBJECTS} (captions are capped at {MAX_CAPTION_WORDS} "
                f"words), got {self.max_objects}"
            )
        if not self.backgrounds or len(set(self.backgrounds)) != len(self.backgrounds):
            raise ValueError(f"WorldSpec.backgrounds must be non-empty without repeats, got {self.backgrounds!r}")
        unknown = [kind for kind in self.backgrounds if kind not in BACKGROUND_KINDS]
        if unknown:
            raise ValueError(f"WorldSpec.backgrounds has unknown kinds {unknown}; known: {BACKGROUND_KINDS}")
        _check_range("size_range", self.size_range, minimum=2.0)
        _check_range("speed_range", self.speed_range, minimum=0.0)
        _check_range("pan_speed_range", self.pan_speed_range, minimum=0.0)
        largest = self.size_range[1]
        # Bounding squares of the largest objects must cover at most half the frame, or placing them apart
        # at frame 0 (and bouncing inside the frame) becomes a game of chance.
        if 2 * largest >= min(self.height, self.width) or self.max_objects * (2 * largest) ** 2 > (
            self.height * self.width / 2
        ):
            raise ValueError(
                f"WorldSpec.size_range upper bound {largest} is too large for {self.max_objects} objects in a "
                f"{self.height}x{self.width} frame"
            )
        if not isinstance(self.lanes, bool):
            raise ValueError(f"WorldSpec.lanes must be a bool, got {self.lanes!r}")
        if self.lanes and self.max_objects * 2 * largest + (self.max_objects - 1) * LANE_GAP_PX > self.height:
            raise ValueError(
                f"WorldSpec.size_range upper bound {largest} is too large for {self.max_objects} rows of objects "
                f"{LANE_GAP_PX:g} px apart in a frame {self.height} px high (lanes)"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values, for training records and pool keys. ``lanes`` is written only when set: records
        of world-v1 (models, checkpoints, encoded pools) predate it and must still name the same world."""
        values = json.loads(json.dumps(asdict(self)))
        if not self.lanes:
            del values["lanes"]
        return values


def _check_range(name: str, value: tuple[float, float], minimum: float) -> None:
    if len(value) != 2 or not minimum <= value[0] <= value[1] or not all(math.isfinite(v) for v in value):
        raise ValueError(f"WorldSpec.{name} must be (low, high) with {minimum} <= low <= high, got {value!r}")


@dataclass(frozen=True)
class Shape:
    """One object: its look and its motion from frame 0 (centre and velocity in px, px/frame)."""

    kind: str
    colour: str
    rgb: tuple[int, int, int]
    size: float
    """Radius of a circle / half side of a square, px."""
    x: float
    y: float
    vx: float
    vy: float
    scale: str = "medium"
    """Size class named in the caption ("small" | "medium" | "large")."""

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"Shape.kind must be one of {SHAPE_KINDS}, got {self.kind!r}")
        if self.scale not in SIZE_CLASSES:
            raise ValueError(f"Shape.scale must be one of {tuple(SIZE_CLASSES)}, got {self.scale!r}")
        if not self.size > 0:
            raise ValueError(f"Shape.size must be > 0, got {self.size}")


@dataclass(frozen=True)
class Background:
    """The backdrop: a base colour, an optional low-contrast texture, and a pan velocity (panning only)."""

    kind: str
    colour: str
    rgb: tuple[int, int, int]
    amplitude: float = 0.0
    """Texture contrast: the pattern adds up to +-amplitude to every channel."""
    waves: tuple[tuple[int, int, float], ...] = ()
    """Texture plane waves (cycles across the width, cycles across the height, phase in radians)."""
    pan: tuple[float, float] = (0.0, 0.0)
    """Texture translation, px per frame (wrapping)."""

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_KINDS:
            raise ValueError(f"Background.kind must be one of {BACKGROUND_KINDS}, got {self.kind!r}")
        if self.kind != "panning" and self.pan != (0.0, 0.0):
            raise ValueError(f"Background.pan must be (0, 0) unless kind is 'panning', got {self.pan!r}")
        if self.kind != "plain" and not self.waves:
            raise ValueError(f"Background.waves must be non-empty for a {self.kind!r} background")


@dataclass(frozen=True)
class Scene:
    """Everything needed to render any frame, and the caption the model is conditioned on."""

    height: int
    width: int
    shapes: tuple[Shape, ...]
    background: Background
    caption: str = ""

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"Scene.height and Scene.width must be >= 1, got {self.height}x{self.width}")
        for shape in self.shapes:
            if 2 * shape.size >= min(self.height, self.width):
                raise ValueError(f"Scene.shapes: a {shape.colour} {shape.kind} of size {shape.size} cannot fit")


@dataclass(frozen=True)
class ObjectState:
    """An object at one frame: its identity, look and centre (px)."""

    index: int
    kind: str
    colour: str
    rgb: tuple[int, int, int]
    size: float
    x: float
    y: float


def _words() -> tuple[str, ...]:
    words = ["a", "an", "and", MOTION_WORD, "on", "over", "plain", "textured", "panning", "background"]
    words += [word for word in SIZE_WORDS.values() if word]
    words += [*SHAPE_KINDS, *OBJECT_COLOURS, *BACKGROUND_COLOURS]
    if len(set(words)) != len(words):
        raise AssertionError("duplicate caption words")
    return tuple(words)


# Every word a caption can contain, in a fixed order (the lab tokenizer's vocabulary is built from it).
VOCABULARY: tuple[str, ...] = _words()


def caption_for(shapes: Sequence[Shape], background: Background) -> str:
    """The caption of a scene: what is visible (objects by size class, colour and kind; background kind and
    colour), never where or how fast, e.g. "a red circle and a small blue square bouncing on a plain gray
    background"."""
    if not shapes:
        raise ValueError("caption_for: shapes must be non-empty")
    phrases = []
    for shape in shapes:
        words = [word for word in (SIZE_WORDS[shape.scale], shape.colour, shape.kind) if word]
        article = "an" if words[0][0] in "aeiou" else "a"
        phrases.append(" ".join([article, *words]))
    setting = {
        "plain": f"on a plain {background.colour} background",
        "texture": f"on a textured {background.colour} background",
        "panning": f"over a panning textured {background.colour} background",
    }[background.kind]
    caption = f"{' and '.join(phrases)} {MOTION_WORD} {setting}"
    words = caption.split(" ")
    unknown = sorted(set(words) - set(VOCABULARY))
    if unknown:
        raise ValueError(f"caption_for: colour or kind outside the vocabulary: {unknown}")
    if len(words) > MAX_CAPTION_WORDS:
        raise ValueError(f"caption_for: {len(words)} words exceeds {MAX_CAPTION_WORDS}")
    return caption


@dataclass(frozen=True)
class Look:
    """What a caption says of one object: its colour, kind and size class."""

    colour: str
    kind: str
    scale: str = "medium"


@dataclass(frozen=True)
class CaptionContent:
    """What a caption names: the objects in order and the background (kind as in ``BACKGROUND_KINDS``)."""

    objects: tuple[Look, ...]
    background_kind: str
    background_colour: str


_SETTINGS: dict[tuple[str, ...], str] = {
    ("on", "a", "plain"): "plain",
    ("on", "a", "textured"): "texture",
    ("over", "a", "panning", "textured"): "panning",
}


def parse_caption(caption: str) -> CaptionContent:
    """The content of a caption in the world's grammar (what :func:`caption_for` writes; case and spacing are
    free), e.g. "a red circle and a small blue square bouncing on a plain gray background". Raises
    ``ValueError`` saying which word breaks the grammar."""
    words = caption.lower().split()
    if MOTION_WORD not in words:
        raise ValueError(f"caption must read '<objects> {MOTION_WORD} <background>'; no {MOTION_WORD!r} in {caption!r}")
    split = words.index(MOTION_WORD)
    objects = [_parse_object(phrase.split(), caption) for phrase in " ".join(words[:split]).split(" and ")]
    colours = [look.colour for look in objects]
    if len(set(colours)) != len(colours):
        raise ValueError(f"caption names a colour twice (every object has its own colour): {caption!r}")
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"caption names {len(objects)} objects, more than {MAX_OBJECTS}: {caption!r}")
    setting = words[split + 1:]
    for lead, kind in _SETTINGS.items():
        # The lead words, one colour word, "background".
        colour = setting[len(lead)] if len(setting) == len(lead) + 2 else None
        if tuple(setting[: len(lead)]) == lead and colour in BACKGROUND_COLOURS and setting[-1] == "background":
            return CaptionContent(tuple(objects), kind, colour)
    raise ValueError(
        f"caption must end 'on a plain|textured <colour> background' or 'over a panning textured <colour> "
        f"background' with a colour among {', '.join(BACKGROUND_COLOURS)}: {caption!r}"
    )


def _parse_object(words: list[str], caption: str) -> Look:
    """``a|an [small|large] <colour> <circle|square>``."""
    sizes = {word: scale for scale, word in SIZE_WORDS.items() if word}
    if len(words) in (3, 4) and words[0] in ("a", "an"):
        scale = sizes.get(words[1], "") if len(words) == 4 else "medium"
        colour, kind = words[-2:]
        if scale and colour in OBJECT_COLOURS and kind in SHAPE_KINDS:
            return Look(colour, kind, scale)
    raise ValueError(
        f"caption object {' '.join(words)!r} must read 'a [small|large] <colour> <circle|square>' with a colour "
        f"among {', '.join(OBJECT_COLOURS)}: {caption!r}"
    )


def _separated(a: Shape, b: Shape, gap: float) -> bool:
    """Whether two shapes at frame 0 are at least ``gap`` px apart (exact for circles and axis-aligned squares)."""
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    if a.kind == b.kind == "circle":
        return math.hypot(dx, dy) >= a.size + b.size + gap
    if a.kind == b.kind == "square":
        return max(dx, dy) >= a.size + b.size + gap
    circle, square = (a, b) if a.kind == "circle" else (b, a)
    # Distance from the circle's centre to the nearest point of the square.
    outside_x = max(abs(circle.x - square.x) - square.size, 0.0)
    outside_y = max(abs(circle.y - square.y) - square.size, 0.0)
    return math.hypot(outside_x, outside_y) >= circle.size + gap


def _sample_background(rng: np.random.Generator, spec: WorldSpec, named: tuple[str, str] | None = None) -> Background:
    """A background; ``named`` (kind, colour), a caption's, fixes those two instead of drawing them."""
    if named is None:
        kind = str(rng.choice(spec.backgrounds))
        colour = str(rng.choice(list(BACKGROUND_COLOURS)))
    else:
        kind, colour = named
    if kind == "plain":
        return Background(kind=kind, colour=colour, rgb=BACKGROUND_COLOURS[colour])
    waves = []
    for _ in range(TEXTURE_WAVES):
        # At least one cycle in some direction, so the wave is a pattern rather than a constant.
        kx, ky = 0, 0
        while kx == 0 and ky == 0:
            kx, ky = (int(k) for k in rng.integers(-TEXTURE_MAX_WAVE_NUMBER, TEXTURE_MAX_WAVE_NUMBER + 1, size=2))
        waves.append((kx, ky, float(rng.uniform(0.0, 2 * math.pi))))
    amplitude = float(rng.uniform(*TEXTURE_AMPLITUDE_RANGE))
    pan = (0.0, 0.0)
    if kind == "panning":
        speed, angle = rng.uniform(*spec.pan_speed_range), rng.uniform(0.0, 2 * math.pi)
        pan = (float(speed * math.cos(angle)), float(speed * math.sin(angle)))
    return Background(
        kind=kind, colour=colour, rgb=BACKGROUND_COLOURS[colour], amplitude=amplitude, waves=tuple(waves), pan=pan
    )


def _sample_look(rng: np.random.Generator, spec: WorldSpec, named: Look | None = None) -> tuple[str, str, float]:
    """An object's kind, size class and size; ``named``, a caption's, fixes the kind and size class."""
    if named is None:
        kind = str(rng.choice(SHAPE_KINDS))
        scale = str(rng.choice(list(SIZE_CLASSES)))
    else:
        kind, scale = named.kind, named.scale
    low, high = SIZE_CLASSES[scale]
    size_low, size_high = spec.size_range
    return kind, scale, float(size_low + (size_high - size_low) * rng.uniform(low, high))


def _sample_shape(
    rng: np.random.Generator, spec: WorldSpec, colour: str, placed: list[Shape], seed: int, named: Look | None = None
) -> Shape:
    kind, scale, size = _sample_look(rng, spec, named)
    speed, angle = rng.uniform(*spec.speed_range), rng.uniform(0.0, 2 * math.pi)
    vx, vy = float(speed * math.cos(angle)), float(speed * math.sin(angle))
    for _ in range(PLACEMENT_ATTEMPTS):
        x = float(rng.uniform(size, spec.width - size))
        y = float(rng.uniform(size, spec.height - size))
        shape = Shape(kind, colour, OBJECT_COLOURS[colour], size, x, y, vx, vy, scale)
        if all(_separated(shape, other, START_GAP_PX) for other in placed):
            return shape
    raise RuntimeError(f"sample_scene(seed={seed}): could not place {len(placed) + 1} objects apart; "
                       f"reduce WorldSpec.size_range or WorldSpec.max_objects")


def _sample_rows(
    rng: np.random.Generator, spec: WorldSpec, colours: list[str], named: Sequence[Look | None] | None = None
) -> list[Shape]:
    """Objects in rows (``WorldSpec.lanes``): the rows stacked in a random order, the height they leave free
    shared out at random above, between and below them."""
    looks = [_sample_look(rng, spec, look) for look in (named or [None] * len(colours))]
    order = rng.permutation(len(colours))
    free = spec.height - sum(2 * size for _, _, size in looks) - (len(colours) - 1) * LANE_GAP_PX
    spaces = free * rng.dirichlet(np.ones(len(colours) + 1))
    top = float(spaces[0])
    centres = [0.0] * len(colours)
    for row, index in enumerate(order):
        size = looks[index][2]
        centres[index] = top + size
        top += 2 * size + LANE_GAP_PX + float(spaces[row + 1])
    shapes = []
    for colour, (kind, scale, size), y in zip(colours, looks, centres, strict=True):
        velocity = float(rng.uniform(*spec.speed_range) * rng.choice((-1.0, 1.0)))
        x = float(rng.uniform(size, spec.width - size))
        shapes.append(Shape(kind, colour, OBJECT_COLOURS[colour], size, x, y, velocity, 0.0, scale))
    return shapes


def sample_scene(seed: int, spec: WorldSpec = WorldSpec()) -> Scene:
    """A random scene, a pure function of ``seed`` and ``spec`` (its own generator, never the global one)."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"sample_scene: seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    background = _sample_background(rng, spec)
    colours = [str(c) for c in rng.choice(list(OBJECT_COLOURS), size=count, replace=False)]
    return _placed_scene(rng, spec, seed, background, colours, [None] * count)


def _placed_scene(
    rng: np.random.Generator,
    spec: WorldSpec,
    seed: int,
    background: Background,
    colours: list[str],
    looks: Sequence[Look | None],
) -> Scene:
    """The scene of these objects (a ``None`` look is drawn), placed and set moving as ``spec`` says."""
    if spec.lanes:
        shapes = _sample_rows(rng, spec, colours, looks)
    else:
        shapes = []
        for colour, look in zip(colours, looks, strict=True):
            shapes.append(_sample_shape(rng, spec, colour, shapes, seed, look))
    return Scene(spec.height, spec.width, tuple(shapes), background, caption_for(shapes, background))


def scene_from_caption(caption: str, seed: int, spec: WorldSpec = WorldSpec()) -> Scene:
    """A scene showing what ``caption`` names (see :func:`parse_caption`), with everything the caption leaves
    open (sizes within their class, positions, velocities, texture) drawn from ``seed`` as ``sample_scene``
    draws it; its caption is ``caption`` in the world's canonical spelling. Raises ``ValueError`` naming what
    the caption asks that ``spec`` cannot show."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"scene_from_caption: seed must be an int >= 0, got {seed!r}")
    content = parse_caption(caption)
    if not spec.min_objects <= len(content.objects) <= spec.max_objects:
        raise ValueError(f"caption names {len(content.objects)} objects; this world shows "
                         f"{spec.min_objects} to {spec.max_objects}: {caption!r}")
    if content.background_kind not in spec.backgrounds:
        raise ValueError(f"caption names a {content.background_kind} background; this world has only "
                         f"{', '.join(spec.backgrounds)} backgrounds: {caption!r}")
    rng = np.random.default_rng(int(seed))
    background = _sample_background(rng, spec, (content.background_kind, content.background_colour))
    colours = [look.colour for look in content.objects]
    return _placed_scene(rng, spec, int(seed), background, colours, content.objects)


def recoloured(scene: Scene, colours: Sequence[str]) -> Scene:
    """``scene`` with its objects, in order, in ``colours``: the same sizes, motion and background, and the
    caption to match. What a prompt switch that renames the objects' colours shows from the switch on."""
    if len(colours) != len(scene.shapes):
        raise ValueError(f"recoloured: {len(colours)} colours for {len(scene.shapes)} objects")
    if len(set(colours)) != len(colours) or not set(colours) <= set(OBJECT_COLOURS):
        raise ValueError(f"recoloured: colours must be distinct names among {', '.join(OBJECT_COLOURS)}: {colours}")
    shapes = tuple(replace(shape, colour=colour, rgb=OBJECT_COLOURS[colour])
                   for shape, colour in zip(scene.shapes, colours, strict=True))  # fmt: skip
    return replace(scene, shapes=shapes, caption=caption_for(shapes, scene.background))


def _reflect(start: float, velocity: float, low: float, high: float, frames: np.ndarray) -> np.ndarray:
    """Position at ``frames`` of a point moving at ``velocity`` between walls at ``low`` and ``high``,
    reflecting elastically: unfold the motion onto a line of period 2L and fold it back."""
    span = high - low
    unfolded = np.mod(start - low + velocity * frames, 2 * span)
    return low + np.where(unfolded <= span, unfolded, 2 * span - unfolded)


def _centres(scene: Scene, shape: Shape, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) of ``shape`` at each of ``frames`` (float64); the shape never leaves the frame."""
    x = _reflect(shape.x, shape.vx, shape.size, scene.width - shape.size, frames)
    y = _reflect(shape.y, shape.vy, shape.size, scene.height - shape.size, frames)
    return x, y


def _frame_numbers(start: int, count: int) -> np.ndarray:
    if not isinstance(start, int | np.integer) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if not isinstance(count, int | np.integer) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    return np.arange(start, start + count, dtype=np.float64)


def object_states(scene: Scene, frame: int) -> tuple[ObjectState, ...]:
    """Every object's exact centre at ``frame`` (>= 0), in draw order."""
    frames = _frame_numbers(frame, 1)
    states = []
    for index, shape in enumerate(scene.shapes):
        x, y = _centres(scene, shape, frames)
        states.append(ObjectState(index, shape.kind, shape.colour, shape.rgb, shape.size, float(x[0]), float(y[0])))
    return tuple(states)


def shape_masks(scene: Scene, start: int, count: int) -> np.ndarray:
    """bool ``[N, count, H, W]``: where each object covers (pixel centre inside), ignoring occlusion."""
    frames = _frame_numbers(start, count)
    columns = np.arange(scene.width, dtype=np.float32)[None, None, :] + 0.5
    rows = np.arange(scene.height, dtype=np.float32)[None, :, None] + 0.5
    masks = np.empty((len(scene.shapes), count, scene.height, scene.width), dtype=bool)
    for index, shape in enumerate(scene.shapes):
        x, y = _centres(scene, shape, frames)
        dx = columns - x.astype(np.float32)[:, None, None]
        dy = rows - y.astype(np.float32)[:, None, None]
        if shape.kind == "circle":
            masks[index] = dx * dx + dy * dy <= shape.size * shape.size
        else:
            masks[index] = (np.abs(dx) <= shape.size) & (np.abs(dy) <= shape.size)
    return masks


def _background_values(background: Background, height: int, width: int, frames: np.ndarray) -> np.ndarray:
    """float32 ``[T or 1, H, W]`` offset the texture adds to every channel (zeros for a plain background)."""
    if background.kind == "plain":
        return np.zeros((1, height, width), dtype=np.float32)
    # A static texture is the same for every frame: evaluate once and let it broadcast.
    times = frames if background.kind == "panning" else np.zeros(1)
    columns = (np.arange(width) + 0.5)[None, None, :]
    rows = (np.arange(height) + 0.5)[None, :, None]
    # The pattern's period is the frame, so shifts reduce modulo its size (keeps float32 phases exact at any t).
    shift_x = np.mod(background.pan[0] * times, width)[:, None, None]
    shift_y = np.mod(background.pan[1] * times, height)[:, None, None]
    pattern = np.zeros((len(times), height, width), dtype=np.float32)
    for kx, ky, phase in background.waves:
        # Texture content at (x, y, t) is the frame-0 content at (x - pan_x t, y - pan_y t); integer wave
        # numbers make this periodic over the frame, so the pan wraps around. sin(a + b) is expanded so the
        # sines are taken on [T, 1, W] and [T, H, 1] arrays only, not on every pixel of every frame.
        along_x = (2 * np.pi * kx * (columns - shift_x) / width + phase).astype(np.float32)
        along_y = (2 * np.pi * ky * (rows - shift_y) / height).astype(np.float32)
        pattern += np.sin(along_x) * np.cos(along_y) + np.cos(along_x) * np.sin(along_y)
    return background.amplitude / len(background.waves) * pattern


def render_background(scene: Scene, start: int, count: int) -> np.ndarray:
    """uint8 ``[count, H, W, 3]``: frames ``start .. start + count - 1`` without the objects."""
    frames = _frame_numbers(start, count)
    offset = _background_values(scene.background, scene.height, scene.width, frames)
    base = np.asarray(scene.background.rgb, dtype=np.float32)
    video = np.empty((count, scene.height, scene.width, 3), dtype=np.uint8)
    # A static background's single frame broadcasts over every frame.
    video[...] = np.clip(np.rint(base + offset[..., None]), 0, 255).astype(np.uint8)
    return video


def render(scene: Scene, start: int, count: int) -> np.ndarray:
    """uint8 ``[count, H, W, 3]``: frames ``start .. start + count - 1``, objects drawn in index order (a
    later object covers an earlier one)."""
    video = render_background(scene, start, count)
    for shape, mask in zip(scene.shapes, shape_masks(scene, start, count), strict=True):
        video[mask] = shape.rgb
    return video
