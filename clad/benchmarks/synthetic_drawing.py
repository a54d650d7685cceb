"""The drawing of the synthetic image categories: pure NumPy scenes, defects and exact masks.

Textures (``stripes``, ``checker``, ``weave``) fill the frame; objects (``disc``, ``nut``,
``capsule``) sit on a plain background. Every normal image is a fresh draw: colour jitter, a
phase shift (textures) or a shift and rotation (objects), a gentle illumination gradient and
sensor noise. A defective image is the same draw with one defect composited on top:

- ``scratch``: a thin curved line of a contrasting colour.
- ``hole``: a dark filled ellipse.
- ``stain``: a coloured, soft-edged, irregular blob.
- ``missing``: material removed; a bite out of an object's rim, or a patch of a texture torn
  away, showing what lies behind.
- ``extra``: material added; a bump on an object's rim, or a shaded foreign lump on a texture.

Each defect is an opacity map ``alpha`` in [0, 1]. Opacities at or below ``MASK_ALPHA`` are cut
to 0, so the mask ``alpha > 0`` is exactly the set of changed pixels: outside the mask the
defective image equals the normal rendering of the same draw byte for byte, and inside it every
pixel moves by at least ``MASK_ALPHA`` times the defect's contrast.

Every image has its own ``numpy.random.Generator`` (``image_rng``) seeded with
``(seed, crc32(category), crc32(split or defect), index)``. All sizes are fractions of the image
side, so any ``image_size`` in [32, 1024] draws the same scene. Files are written by
``clad.benchmarks.synthetic_layouts``; ``clad.benchmarks.synthetic`` is the entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from clad.benchmarks.generated import stable_id

TEXTURES = ("stripes", "checker", "weave")
OBJECTS = ("disc", "nut", "capsule")
SYNTHETIC_CATEGORIES: tuple[str, ...] = TEXTURES + OBJECTS
DEFECT_KINDS = ("scratch", "hole", "stain", "missing", "extra")

MASK_ALPHA = 0.25  # defect opacities at or below this are cut to 0; the mask is alpha > 0
NOISE_STD = 0.015  # sensor noise, in [0, 1] intensity units
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
GENERATOR_VERSION = 1  # bump when the drawing changes, so stale folders are rewritten

Colour = tuple[float, float, float]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a square image, in units of the image side.

    Attributes:
        x: [S, S] column coordinate, (j + 0.5) / S.
        y: [S, S] row coordinate, (i + 0.5) / S.
        size: S, the side in pixels.
    """

    x: np.ndarray
    y: np.ndarray
    size: int


@lru_cache(maxsize=8)
def make_grid(size: int) -> Grid:
    """The (read-only, cached) coordinate grid of an ``size`` x ``size`` image."""
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")  # [S, S] each
    x.setflags(write=False)
    y.setflags(write=False)
    return Grid(x=x, y=y, size=size)


def local_coords(grid: Grid, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates [S, S] in a frame centred at (cx, cy) and rotated by ``angle`` radians."""
    dx, dy = grid.x - cx, grid.y - cy
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def opacity(sdf: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance (negative inside, in units of
    the image side): a one-pixel ramp, 0.5 on the boundary."""
    return np.clip(0.5 - sdf * size, 0.0, 1.0)


def smoothstep(t: np.ndarray) -> np.ndarray:
    """3t^2 - 2t^3 of t clipped to [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def sdf_hexagon(u: np.ndarray, v: np.ndarray, apothem: float) -> np.ndarray:
    """Exact signed distance to a regular hexagon with flat top and bottom (I. Quilez)."""
    kx, ky, kz = -0.8660254037844386, 0.5, 0.5773502691896258
    u, v = np.abs(u), np.abs(v)
    fold = 2.0 * np.minimum(kx * u + ky * v, 0.0)
    u, v = u - fold * kx, v - fold * ky
    u = u - np.clip(u, -kz * apothem, kz * apothem)
    v = v - apothem
    return np.hypot(u, v) * np.sign(v)


def sdf_blob(u: np.ndarray, v: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Approximate signed distance to an irregular blob: a circle whose radius is modulated by
    angular harmonics 2-4 of random amplitude (up to 15 % each) and phase."""
    theta = np.arctan2(v, u)
    amplitudes = rng.uniform(0.0, 0.15, size=3)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
    wobble = sum(
        a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amplitudes, phases, strict=True)
    )
    return np.hypot(u, v) - radius * (1.0 + wobble)


def distance_to_polyline(grid: Grid, points: np.ndarray) -> np.ndarray:
    """Distance [S, S] from each pixel centre to a polyline of ``points`` [K, 2] (x, y)."""
    dist = np.full((grid.size, grid.size), np.inf)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:], strict=True):
        dx, dy = bx - ax, by - ay
        px, py = grid.x - ax, grid.y - ay
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        np.minimum(dist, np.hypot(px - t * dx, py - t * dy), out=dist)
    return dist


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Palette:
    """Defect colours of a category; ``missing`` is what shows where material is removed."""

    scratch: Colour
    stain: Colour
    missing: Colour
    extra: Colour


@dataclass(frozen=True)
class Scene:
    """A normal rendering before illumination and noise.

    Attributes:
        image: [S, S, 3] float64 colours in [0, 1].
        surface: [S, S] opacity of the inspected material (all ones for textures).
        palette: the defect colours that contrast with this scene.
        outline: [S, S] signed distance to an object's outer silhouette; None for textures.
        centre: an object's centre (x, y); None for textures.
    """

    image: np.ndarray
    surface: np.ndarray
    palette: Palette
    outline: np.ndarray | None = None
    centre: tuple[float, float] | None = None


def jitter(colour: Colour, rng: np.random.Generator, amount: float = 0.03) -> np.ndarray:
    """[3] colour moved by up to ``amount`` per channel."""
    return np.clip(np.asarray(colour) + rng.uniform(-amount, amount, size=3), 0.0, 1.0)


def mix(low: np.ndarray, high: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[S, S, 3] blend of two [3] colours by a [S, S] weight in [0, 1]."""
    return low + (high - low) * t[..., None]


def texture_scene(image: np.ndarray, palette: Palette) -> Scene:
    """A texture fills the frame: the whole image is inspected surface."""
    return Scene(image=image, surface=np.ones(image.shape[:2]), palette=palette)


def render_stripes(grid: Grid, rng: np.random.Generator) -> Scene:
    """Soft diagonal stripes, about 7 per image side; random phase, small angle jitter."""
    angle = np.deg2rad(20.0 + rng.uniform(-5.0, 5.0))
    period = rng.uniform(0.95, 1.05) / 7.0
    phase = rng.uniform(0.0, 1.0)
    t = (grid.x * np.cos(angle) + grid.y * np.sin(angle)) / period + phase
    band = np.clip(1.5 * np.cos(2.0 * np.pi * t) + 0.5, 0.0, 1.0)  # [S, S] soft square wave
    dark, light = jitter((0.2, 0.28, 0.45), rng), jitter((0.58, 0.64, 0.72), rng)
    palette = Palette(
        scratch=(0.97, 0.92, 0.55),
        stain=(0.62, 0.27, 0.08),
        missing=(0.93, 0.91, 0.86),
        extra=(0.3, 0.62, 0.3),
    )
    return texture_scene(mix(dark, light, band), palette)


def render_checker(grid: Grid, rng: np.random.Generator) -> Scene:
    """A soft checkerboard of 6 x 6 cells with random phase and small rotation."""
    u, v = local_coords(grid, 0.5, 0.5, np.deg2rad(rng.uniform(-3.0, 3.0)))
    cells = 6.0
    wave = np.sin(np.pi * cells * u + rng.uniform(0.0, 2.0 * np.pi)) * np.sin(
        np.pi * cells * v + rng.uniform(0.0, 2.0 * np.pi)
    )
    tile = np.clip(0.5 + 2.5 * wave, 0.0, 1.0)  # [S, S] soft sign
    dark, light = jitter((0.36, 0.28, 0.2), rng), jitter((0.64, 0.52, 0.38), rng)
    palette = Palette(
        scratch=(0.96, 0.96, 0.96),
        stain=(0.12, 0.33, 0.62),
        missing=(0.92, 0.9, 0.84),
        extra=(0.3, 0.62, 0.32),
    )
    return texture_scene(mix(dark, light, tile), palette)


def render_weave(grid: Grid, rng: np.random.Generator) -> Scene:
    """A basket weave: 5 x 5 cells alternating two horizontal and two vertical threads."""
    cells = 5.0
    cx = grid.x * cells + rng.uniform(0.0, 1.0)
    cy = grid.y * cells + rng.uniform(0.0, 1.0)
    horizontal = (np.floor(cx) + np.floor(cy)) % 2 == 0
    across_h = 0.5 - 0.5 * np.cos(2.0 * np.pi * 2.0 * cy)  # thread profile, 1 at thread centre
    across_v = 0.5 - 0.5 * np.cos(2.0 * np.pi * 2.0 * cx)
    along_h = 0.8 + 0.2 * np.sin(np.pi * (cx % 1.0))  # over-under shading along a thread
    along_v = 0.8 + 0.2 * np.sin(np.pi * (cy % 1.0))
    shade = np.where(horizontal, across_h * along_h, across_v * along_v)
    dark, light = jitter((0.3, 0.22, 0.15), rng), jitter((0.78, 0.65, 0.47), rng)
    palette = Palette(
        scratch=(0.97, 0.97, 0.9),
        stain=(0.15, 0.28, 0.62),
        missing=(0.95, 0.93, 0.88),
        extra=(0.25, 0.55, 0.3),
    )
    return texture_scene(mix(dark, light, 0.25 + 0.75 * shade), palette)


def object_pose(rng: np.random.Generator, max_angle: float) -> tuple[float, float, float]:
    """Centre (x, y) shifted by up to 5 % of the side, and a rotation in [-max_angle, max_angle]."""
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05, size=2)
    return float(cx), float(cy), float(rng.uniform(-max_angle, max_angle))


def object_scene(
    background: np.ndarray,
    body: np.ndarray,
    surface: np.ndarray,
    outline: np.ndarray,
    palette: Palette,
    centre: tuple[float, float],
) -> Scene:
    """Composite a [S, S, 3] ``body`` with opacity ``surface`` [S, S] over a [3] background."""
    image = background * (1.0 - surface[..., None]) + body * surface[..., None]
    return Scene(image, surface, palette, outline=outline, centre=centre)


def render_disc(grid: Grid, rng: np.random.Generator) -> Scene:
    """A domed metal disc on a dark background, with an engraved ring and a radial bar that
    show its rotation."""
    cx, cy, angle = object_pose(rng, np.pi)
    u, v = local_coords(grid, cx, cy, angle)
    radius = 0.3 * rng.uniform(0.97, 1.03)
    dist = np.hypot(u, v)
    outline = dist - radius
    surface = opacity(outline, grid.size)
    metal, engraving = jitter((0.74, 0.72, 0.68), rng), jitter((0.45, 0.43, 0.4), rng)
    ring = opacity(np.abs(dist - 0.62 * radius) - 0.018, grid.size)
    bar = opacity(
        np.maximum(np.abs(v) - 0.015, np.abs(u - 0.22 * radius) - 0.22 * radius), grid.size
    )
    dome = 1.0 - 0.12 * np.clip(dist / radius, 0.0, 1.0) ** 2
    body = mix(metal, engraving, np.maximum(ring, bar)) * dome[..., None]
    background = jitter((0.1, 0.11, 0.14), rng, amount=0.02)
    palette = Palette(
        scratch=(0.12, 0.1, 0.09),
        stain=(0.62, 0.3, 0.08),
        missing=tuple(background),
        extra=tuple(metal),
    )
    return object_scene(background, body, surface, outline, palette, (cx, cy))


def render_nut(grid: Grid, rng: np.random.Generator) -> Scene:
    """A hexagonal nut with a chamfered face and a through hole, on a light background."""
    cx, cy, angle = object_pose(rng, np.pi / 6.0)
    u, v = local_coords(grid, cx, cy, angle)
    apothem = 0.27 * rng.uniform(0.97, 1.03)
    dist = np.hypot(u, v)
    outline = sdf_hexagon(u, v, apothem)
    hole = opacity(dist - 0.45 * apothem, grid.size)
    surface = opacity(outline, grid.size) * (1.0 - hole)
    steel, face = jitter((0.42, 0.4, 0.37), rng), jitter((0.55, 0.53, 0.5), rng)
    chamfer = opacity(dist - 0.8 * apothem, grid.size)
    body = mix(steel, face, chamfer)
    background = jitter((0.86, 0.85, 0.82), rng, amount=0.02)
    palette = Palette(
        scratch=(0.96, 0.94, 0.86),
        stain=(0.72, 0.5, 0.08),
        missing=tuple(background),
        extra=tuple(steel),
    )
    return object_scene(background, body, surface, outline, palette, (cx, cy))


def render_capsule(grid: Grid, rng: np.random.Generator) -> Scene:
    """A two-colour pill capsule lying roughly horizontally (+-10 degrees), shaded as a
    cylinder, on a dark grey background."""
    cx, cy, angle = object_pose(rng, np.deg2rad(10.0))
    u, v = local_coords(grid, cx, cy, angle)
    half_length, radius = 0.24 * rng.uniform(0.97, 1.03), 0.12 * rng.uniform(0.97, 1.03)
    outline = np.hypot(u - np.clip(u, -half_length, half_length), v) - radius
    surface = opacity(outline, grid.size)
    red, cream = jitter((0.78, 0.2, 0.18), rng), jitter((0.9, 0.87, 0.78), rng)
    left = opacity(u, grid.size)  # 1 on the left half
    cylinder = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - (v / radius) ** 2, 0.0, 1.0))
    body = mix(cream, red, left) * cylinder[..., None]
    background = jitter((0.2, 0.21, 0.23), rng, amount=0.02)
    palette = Palette(
        scratch=(0.08, 0.07, 0.07),
        stain=(0.15, 0.35, 0.75),
        missing=tuple(background),
        extra=tuple(cream),
    )
    return object_scene(background, body, surface, outline, palette, (cx, cy))


# ----------------------------------------------------------------------------- defects

Defect = tuple[np.ndarray, np.ndarray]  # opacity [S, S], colour [3] or [S, S, 3]


def pick_point(region: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly chosen pixel centre (x, y) of a boolean [S, S] region."""
    candidates = np.flatnonzero(region)
    if candidates.size == 0:
        raise RuntimeError("internal error: empty region for a defect")
    index = candidates[rng.integers(candidates.size)]
    return float(grid.x.flat[index]), float(grid.y.flat[index])


def inside_point(scene: Scene, grid: Grid, rng: np.random.Generator) -> tuple[float, float]:
    """A point well inside the material: the central 70 % of a texture, or at least 3 % of the
    side inside an object's full-opacity surface."""
    if scene.outline is None:
        region = (np.abs(grid.x - 0.5) < 0.35) & (np.abs(grid.y - 0.5) < 0.35)
    else:
        region = (scene.surface > 0.999) & (scene.outline < -0.03)
    return pick_point(region, grid, rng)


def rim_point(scene: Scene, grid: Grid, rng: np.random.Generator) -> tuple[float, float]:
    """A point on an object's outer silhouette (within half a pixel of it)."""
    assert scene.outline is not None  # objects only: textures have no outline
    return pick_point(np.abs(scene.outline) * grid.size <= 0.5, grid, rng)


def min_extent(fraction: float, grid: Grid, pixels: float) -> float:
    """``fraction`` of the side, but at least ``pixels`` pixels."""
    return max(fraction, pixels / grid.size)


def draw_scratch(scene: Scene, grid: Grid, rng: np.random.Generator) -> Defect:
    """A quadratic Bezier curve, 2.2 % of the side thick (at least 1.3 px)."""
    cx, cy = inside_point(scene, grid, rng)
    is_object = scene.outline is not None
    length = rng.uniform(0.15, 0.3) if is_object else rng.uniform(0.3, 0.5)
    angle = rng.uniform(0.0, np.pi)
    along = np.array([np.cos(angle), np.sin(angle)]) * length / 2.0
    normal = np.array([-along[1], along[0]]) * rng.uniform(-0.5, 0.5)
    centre = np.array([cx, cy])
    start, control, end = centre - along, centre + normal, centre + along
    t = np.linspace(0.0, 1.0, 17)[:, None]  # [K, 1]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # [K, 2]
    half_width = min_extent(0.022, grid, 1.3) / 2.0
    alpha = opacity(distance_to_polyline(grid, points) - half_width, grid.size)
    return alpha * scene.surface, np.asarray(scene.palette.scratch)


def draw_hole(scene: Scene, grid: Grid, rng: np.random.Generator) -> Defect:
    """A near-black ellipse, semi-axes 3.5-6 % of the side (at least 1.5 px)."""
    cx, cy = inside_point(scene, grid, rng)
    major = min_extent(rng.uniform(0.035, 0.06), grid, 1.5)
    minor = max(major * rng.uniform(0.6, 1.0), 1.5 / grid.size)
    u, v = local_coords(grid, cx, cy, rng.uniform(0.0, np.pi))
    sdf = (np.hypot(u / major, v / minor) - 1.0) * minor  # approximate distance
    return opacity(sdf, grid.size) * scene.surface, np.array([0.03, 0.03, 0.03])


def draw_stain(scene: Scene, grid: Grid, rng: np.random.Generator) -> Defect:
    """An irregular blob, radius 6-10 % of the side, fading out over its outer half radius,
    at 75-90 % peak opacity."""
    cx, cy = inside_point(scene, grid, rng)
    radius = min_extent(rng.uniform(0.06, 0.1), grid, 2.0)
    u, v = local_coords(grid, cx, cy, 0.0)
    fade = smoothstep(-sdf_blob(u, v, radius, rng) / (0.5 * radius))
    alpha = rng.uniform(0.75, 0.9) * fade
    return alpha * scene.surface, np.asarray(scene.palette.stain)


def draw_missing(scene: Scene, grid: Grid, rng: np.random.Generator) -> Defect:
    """Objects: a bite of radius 7-10 % of the side out of the rim, showing background.
    Textures: an irregular patch, radius 7-11 %, torn away to the backing colour."""
    if scene.outline is None:
        cx, cy = inside_point(scene, grid, rng)
        radius = rng.uniform(0.07, 0.11)
    else:
        cx, cy = rim_point(scene, grid, rng)
        radius = rng.uniform(0.07, 0.1)
    u, v = local_coords(grid, cx, cy, 0.0)
    alpha = opacity(sdf_blob(u, v, min_extent(radius, grid, 2.0), rng), grid.size)
    return alpha * scene.surface, np.asarray(scene.palette.missing)


def draw_extra(scene: Scene, grid: Grid, rng: np.random.Generator) -> Defect:
    """Objects: a bump of the object's material, radius 5-8 % of the side, grown out of the rim.
    Textures: a hard-edged foreign lump, radius 5-8 %, lit from the top left."""
    radius = min_extent(rng.uniform(0.05, 0.08), grid, 2.0)
    if scene.outline is None:
        cx, cy = inside_point(scene, grid, rng)
        u, v = local_coords(grid, cx, cy, 0.0)
        alpha = opacity(sdf_blob(u, v, radius, rng), grid.size)
        light = np.clip(1.0 - 0.3 * (u + v) / (1.4 * radius), 0.6, 1.4)  # [S, S]
        colour = np.clip(np.asarray(scene.palette.extra) * light[..., None], 0.0, 1.0)
        return alpha, colour
    rx, ry = rim_point(scene, grid, rng)
    assert scene.centre is not None  # an object (it has an outline), so it has a centre
    ox, oy = scene.centre
    outward = np.array([rx - ox, ry - oy]) / max(np.hypot(rx - ox, ry - oy), 1e-9)
    cx, cy = np.array([rx, ry]) + 0.4 * radius * outward
    u, v = local_coords(grid, cx, cy, 0.0)
    alpha = opacity(sdf_blob(u, v, radius, rng), grid.size) * (1.0 - scene.surface)
    return alpha, np.asarray(scene.palette.extra)


@dataclass(frozen=True)
class CategorySpec:
    render: Callable[[Grid, np.random.Generator], Scene]
    defects: tuple[str, ...]


CATEGORY_SPECS: dict[str, CategorySpec] = {
    "stripes": CategorySpec(render_stripes, ("scratch", "hole", "stain", "missing")),
    "checker": CategorySpec(render_checker, ("scratch", "stain", "missing", "extra")),
    "weave": CategorySpec(render_weave, ("hole", "stain", "missing", "extra")),
    "disc": CategorySpec(render_disc, ("scratch", "stain", "missing", "extra")),
    "nut": CategorySpec(render_nut, ("scratch", "hole", "missing", "extra")),
    "capsule": CategorySpec(render_capsule, DEFECT_KINDS),
}
DRAW_DEFECT: dict[str, Callable[[Scene, Grid, np.random.Generator], Defect]] = {
    "scratch": draw_scratch,
    "hole": draw_hole,
    "stain": draw_stain,
    "missing": draw_missing,
    "extra": draw_extra,
}


def category_spec(category: str) -> CategorySpec:
    """The spec of a synthetic category; an unknown name fails with the list of known ones."""
    if category not in CATEGORY_SPECS:
        raise ValueError(
            f"unknown synthetic category {category!r}; known: {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    return CATEGORY_SPECS[category]


def defect_kinds(category: str) -> tuple[str, ...]:
    """The defect kinds drawn for ``category`` (its ``test/`` folders besides ``good``)."""
    return category_spec(category).defects


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendering:
    """One drawn image.

    Attributes:
        image: [S, S, 3] uint8, with the defect (if any).
        normal: [S, S, 3] uint8, the same draw (pose, colours, noise) without the defect.
        mask: [S, S] bool, exactly the pixels where the defect was composited.
    """

    image: np.ndarray
    normal: np.ndarray
    mask: np.ndarray


def render_sample(
    category: str, defect: str | None, image_size: int, rng: np.random.Generator
) -> Rendering:
    """Draw one image of ``category`` with ``defect`` (None or ``"good"`` for a normal image).

    A defect whose mask would cover fewer than max(4, 0.1 % of the image) pixels (e.g. a
    scratch mostly off an object) is redrawn, up to 20 times.
    """
    spec = category_spec(category)
    if defect == "good":
        defect = None
    if defect is not None and defect not in spec.defects:
        raise ValueError(
            f"category {category!r} has no defect {defect!r}; known: {', '.join(spec.defects)}"
        )
    check_image_size(image_size)
    grid = make_grid(image_size)
    scene = spec.render(grid, rng)
    alpha = np.zeros((image_size, image_size))
    colour = np.zeros(3)
    if defect is not None:
        min_area = max(4, 0.001 * image_size**2)
        for _ in range(20):
            alpha, colour = DRAW_DEFECT[defect](scene, grid, rng)
            alpha = np.where(alpha > MASK_ALPHA, alpha, 0.0)  # the mask is exactly alpha > 0
            if np.count_nonzero(alpha) >= min_area:
                break
        else:
            raise RuntimeError(f"internal error: could not place a {defect} on {category}")
    gx, gy = rng.uniform(-0.06, 0.06, size=2)
    light = 1.0 + gx * (grid.x - 0.5) + gy * (grid.y - 0.5)  # [S, S] illumination gradient
    noise = rng.normal(0.0, NOISE_STD, size=(image_size, image_size, 3))

    def finish(image: np.ndarray) -> np.ndarray:
        return np.round(np.clip(image * light[..., None] + noise, 0.0, 1.0) * 255).astype(np.uint8)

    defective = scene.image * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return Rendering(image=finish(defective), normal=finish(scene.image), mask=alpha > 0)


def image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image; ``split`` is ``"train"``, ``"good"`` or a defect kind."""
    return np.random.default_rng([seed, stable_id(category), stable_id(split), index])


def check_image_size(image_size: int) -> None:
    """Raise ValueError unless ``MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE``."""
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}"
        )
