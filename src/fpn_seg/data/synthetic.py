"""Synthetic street scenes in the Cityscapes folder layout, with Cityscapes label ids.

    python -m fpn_seg.data.synthetic --output DIR [--num-train 300] [--num-val 60] [--height 128 --width 256]

writes::

    DIR/leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png
    DIR/gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png
    DIR/synthetic_street_scenes.json        (the parameters; a second call with the same ones reuses the files)

so that `load_cityscapes(DIR)` reads it through the label-id -> train-id path. The scenes are drawn with a pinhole
camera over a flat street (road narrowing to a vanishing point, lane markings, sidewalks with tiles, optional grass,
building facades with window grids, trees, poles, cars seen from behind, pedestrians), with textures, noise, random
lighting and occlusion (objects drawn far to near). Classes (label id -> train id): road 7 -> 0, sidewalk 8 -> 1,
building 11 -> 2, pole 17 -> 5, vegetation 21 -> 8, terrain 22 -> 9, sky 23 -> 10, person 24 -> 11, car 26 -> 13;
plus unlabelled pixels that become 255: ego vehicle (1, a bonnet at the bottom of some images) and static
objects (4, boxes on the sidewalk).

Deterministic: image `i` of a split depends only on `(seed, split, i)`, so asking for more images keeps the first ones.
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from ..cli import run_command

# Cityscapes label ids drawn by the generator.
EGO_VEHICLE, STATIC, ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, TERRAIN, SKY, PERSON, CAR = (
    1, 4, 7, 8, 11, 17, 21, 22, 23, 24, 26,
)  # fmt: skip
SYNTHETIC_LABEL_IDS = (EGO_VEHICLE, STATIC, ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, TERRAIN, SKY, PERSON, CAR)
SPLIT_CITIES = {"train": ("ashford", "brightwater"), "val": ("cedarport",)}
MANIFEST_NAME = "synthetic_street_scenes.json"

_BUILDING_COLOURS = np.array(
    [
        [168, 150, 128],
        [140, 132, 126],
        [150, 92, 70],
        [186, 172, 146],
        [112, 110, 118],
        [160, 128, 96],
        [196, 188, 170],
    ],
    dtype=np.float32,
)
_CAR_COLOURS = np.array(
    [[180, 20, 25], [25, 50, 150], [230, 230, 228], [25, 25, 28], [150, 155, 160], [220, 180, 20], [30, 110, 60]],
    dtype=np.float32,
)
_SHIRT_COLOURS = np.array(
    [[200, 40, 40], [40, 80, 190], [240, 240, 240], [30, 30, 30], [230, 150, 30], [120, 40, 140], [40, 150, 140]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height 1 looking along +Z over a flat ground: world (X, Y, Z) -> pixel (x, y)."""

    horizon: float
    vanish_x: float
    focal: float

    def x(self, lateral: np.ndarray | float, depth: np.ndarray | float):
        return self.vanish_x + self.focal * lateral / depth

    def y(self, height: np.ndarray | float, depth: np.ndarray | float):
        return self.horizon + self.focal * (1.0 - height) / depth


class _Canvas:
    """An RGB float image and its label-id map, painted in place (later paint occludes earlier)."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.height, self.width, self.rng = height, width, rng
        self.rgb = np.zeros((height, width, 3), dtype=np.float32)
        self.labels = np.zeros((height, width), dtype=np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5

    def paint(self, mask: np.ndarray, colour, label_id: int, window=(slice(None), slice(None))) -> None:
        """Set `colour` ((3,) or (h, w, 3) over the window) and `label_id` where `mask` holds, inside `window`."""
        rgb, labels = self.rgb[window], self.labels[window]
        colour = np.broadcast_to(np.asarray(colour, dtype=np.float32), rgb.shape)
        rgb[mask] = colour[mask]
        labels[mask] = label_id

    def noise(self, cell: float, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Smooth value noise in [-1, 1] with features about `cell` pixels wide."""
        height, width = shape or (self.height, self.width)
        coarse = self.rng.uniform(-1, 1, (max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)))
        image = PIL.Image.fromarray(coarse.astype(np.float32), mode="F")
        return np.asarray(image.resize((width, height), PIL.Image.BILINEAR))

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """The clipped pixel window of a box, and the pixel-centre coordinates inside it (empty when off-image)."""
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.width)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.height)
        window = (slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
        return window, self.yy[window], self.xx[window]


def _sky(canvas: _Canvas, camera: _Camera) -> None:
    """Blue gradient, lighter towards the horizon, with clouds; painted above the horizon."""
    rng = canvas.rng
    rows = slice(0, min(int(np.ceil(camera.horizon)) + 1, canvas.height))
    yy = canvas.yy[rows]
    t = np.clip(yy / max(camera.horizon, 1.0), 0, 1)[..., None]
    top = np.array([55, 105, 185], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    low = np.array([165, 195, 225], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    colour = top * (1 - t) + low * t
    clouds = np.clip(canvas.noise(canvas.width / 6, yy.shape) * 1.6 + rng.uniform(-0.8, 0.3), 0, 1)[..., None]
    colour = colour * (1 - 0.7 * clouds) + 240 * 0.7 * clouds
    canvas.paint(np.ones(yy.shape, bool), colour, SKY, (rows, slice(None)))


def _ground(canvas: _Canvas, camera: _Camera, street: dict) -> None:
    """Road, lane markings, sidewalks (tiled), optional grass strips, everything below the horizon."""
    rng = canvas.rng
    rows = slice(max(int(camera.horizon), 0), canvas.height)
    window = (rows, slice(None))
    yy, xx = canvas.yy[window], canvas.xx[window]
    below = yy > camera.horizon + 0.5
    depth = camera.focal / np.maximum(yy - camera.horizon, 0.5)
    lateral = (xx - camera.vanish_x) * depth / camera.focal
    left, right = street["road"]
    fine = rng.standard_normal(yy.shape, dtype=np.float32)

    asphalt = rng.uniform(70, 100) + 6 * fine + 8 * canvas.noise(12, yy.shape)
    road_rgb = np.stack([asphalt, asphalt, asphalt * 1.03 + 2], -1)
    dashes = (np.abs(lateral - street["centre_line"]) < 0.07) & ((depth / 3.0) % 1.0 < 0.45)
    edges = (np.abs(lateral - left - 0.15) < 0.05) | (np.abs(lateral - right + 0.15) < 0.05)
    road_rgb[dashes | edges] = 225 + 5 * fine[dashes | edges, None]
    canvas.paint(below & (lateral >= left) & (lateral <= right), road_rgb, ROAD, window)

    tiles = ((lateral / 0.7) % 1.0 < 0.08) | ((depth / 0.7) % 1.0 < 0.08)
    base = np.array([188, 168, 172]) + rng.uniform(-20, 20, 3)
    pavement = base + (5 * fine + 6 * canvas.noise(20, yy.shape))[..., None] - 35 * tiles[..., None]
    for near, far in street["sidewalks"]:
        inside = below & (lateral >= min(near, far)) & (lateral <= max(near, far))
        curb = np.abs(lateral - near) < 0.15
        canvas.paint(inside, np.where(curb[..., None], pavement + 25, pavement), SIDEWALK, window)

    grass = np.array([165, 190, 95]) + rng.uniform(-12, 12, 3) + (7 * canvas.noise(10, yy.shape) + 3 * fine)[..., None]
    for near, far in street["grass"]:
        canvas.paint(below & (lateral >= min(near, far)) & (lateral <= max(near, far)), grass, TERRAIN, window)


def _facades(canvas: _Canvas, camera: _Camera, side: int, lateral: float, start_depth: float) -> None:
    """Blocks of buildings on the plane `X = lateral` from `start_depth` on; some gaps show a hedge and sky."""
    rng = canvas.rng
    first, last = (0, int(np.ceil(camera.vanish_x))) if side < 0 else (int(camera.vanish_x), canvas.width)
    first, last = max(first, 0), min(last, canvas.width)
    xx, yy = canvas.xx[:, first:last], canvas.yy[:, first:last]
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_depth = (xx - camera.vanish_x) / lateral  # focal / depth, > 0 on this side of the street
        depth = np.where(inverse_depth > 0.05, camera.focal / inverse_depth, np.inf)
        height = 1.0 - (yy - camera.horizon) / inverse_depth  # world height seen at each pixel
    texture = 4 * rng.standard_normal(depth.shape, dtype=np.float32) + 5 * canvas.noise(15, depth.shape)
    block_start = start_depth
    while block_start < 2 * camera.focal:  # farther blocks are under half a pixel wide
        # Blocks at least ~2 pixels wide: far away, one block stands for several.
        length = max(rng.uniform(4, 14), 2 * block_start**2 / (abs(lateral) * camera.focal))
        block_end = block_start + length
        x0, x1 = sorted((camera.x(lateral, block_start), camera.x(lateral, block_end)))
        columns = slice(max(int(x0), first) - first, min(int(np.ceil(x1)), last) - first)
        if columns.start >= columns.stop:
            block_start = block_end
            continue
        local = (slice(None), columns)
        window = (slice(None), slice(columns.start + first, columns.stop + first))
        z, h = depth[local], height[local]
        block = (z >= block_start) & (z < block_end) & (h >= 0)
        if rng.uniform() < 0.15:  # a gap: a hedge, and the sky behind
            _foliage(canvas, block & (h < rng.uniform(1.2, 3.5)), window)
        else:
            top = rng.uniform(3, 11)
            colour = _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))] + rng.uniform(-15, 15, 3)
            rgb = (0.85 if rng.uniform() < 0.5 else 1.0) * colour + texture[local][..., None]
            floor_height, window_pitch = rng.uniform(1.4, 2.0), rng.uniform(1.2, 2.2)
            along, up = ((z - block_start) / window_pitch) % 1.0, (h / floor_height) % 1.0
            windows = (h > 1.3) & (h < top - 0.5) & (up > 0.35) & (up < 0.8) & (along > 0.25) & (along < 0.7)
            glass = np.array([45, 55, 75]) + rng.uniform(-10, 25) + texture[local][..., None]
            rgb = np.where(windows[..., None], glass, rgb)
            if rng.uniform() < 0.5:  # shop windows on the ground floor
                shop = (h < 1.1) & (((z - block_start) / 3.0) % 1.0 < 0.6)
                rgb = np.where(shop[..., None], glass * 0.8, rgb)
            canvas.paint(block & (h < top), rgb, BUILDING, window)
        block_start = block_end


def _foliage(canvas: _Canvas, mask: np.ndarray, window=(slice(None), slice(None))) -> None:
    """Leafy green texture (dark blotches, bright speckles) over `mask` (inside `window`)."""
    rng = canvas.rng
    shape = mask.shape
    if not mask.any():
        return
    leaves = canvas.noise(3, shape) * 0.6 + canvas.noise(8, shape) * 0.4
    speckle = rng.standard_normal(shape, dtype=np.float32)
    base = np.array([62, 105, 38]) + rng.uniform(-15, 15, 3)
    colour = base * (1.0 + 0.35 * leaves[..., None]) + 9 * speckle[..., None]
    canvas.paint(mask, colour, VEGETATION, window)


def _tree(canvas: _Canvas, camera: _Camera, lateral: float, depth: float) -> None:
    rng = canvas.rng
    scale = camera.focal / depth
    trunk_half = max(0.09 * scale, 0.6)
    crown_height, crown_radius = rng.uniform(2.2, 4.0), rng.uniform(1.0, 1.8)
    x = camera.x(lateral, depth)
    window, yy, xx = canvas.box(x - trunk_half, x + trunk_half, camera.y(crown_height, depth), camera.y(0, depth))
    canvas.paint(np.ones(yy.shape, bool), np.array([85, 70, 55]) + rng.uniform(-10, 10, 3), VEGETATION, window)
    cy, radius = camera.y(crown_height + crown_radius * 0.4, depth), crown_radius * scale
    window, yy, xx = canvas.box(x - radius * 1.3, x + radius * 1.3, cy - radius * 1.2, cy + radius * 1.2)
    if yy.size:
        wobble = canvas.noise(max(radius / 3, 1.5), yy.shape)
        crown = ((xx - x) / 1.2) ** 2 + (yy - cy) ** 2 < (radius * (1 + 0.25 * wobble)) ** 2
        _foliage(canvas, crown, window)


def _pole(canvas: _Canvas, camera: _Camera, lateral: float, depth: float) -> None:
    rng = canvas.rng
    scale = camera.focal / depth
    half = max(0.1 * scale, 1.0)
    x = camera.x(lateral, depth)
    window, yy, xx = canvas.box(x - half, x + half, camera.y(rng.uniform(4, 6), depth), camera.y(0, depth))
    if yy.size:
        shade = 1.0 - 0.35 * np.abs(xx - x) / max(half, 1.0)
        colour = (rng.uniform(120, 160) * shade)[..., None] * np.array([1.0, 1.0, 1.05])
        canvas.paint(np.ones(yy.shape, bool), colour, POLE, window)


def _car(canvas: _Canvas, camera: _Camera, lateral: float, depth: float) -> None:
    """A car seen from behind: body, cabin with rear window, wheels, tail lights."""
    rng = canvas.rng
    scale = camera.focal / depth
    half_width, body_top, roof = rng.uniform(0.55, 0.7), rng.uniform(0.45, 0.55), rng.uniform(0.85, 1.05)
    x, ground = camera.x(lateral, depth), camera.y(0, depth)
    window, yy, xx = canvas.box(x - half_width * scale, x + half_width * scale, camera.y(roof, depth), ground)
    if not yy.size:
        return
    u = (xx - x) / (half_width * scale)  # -1..1 across the car
    v = (ground - yy) / scale  # world height
    cabin = v > body_top
    shape = ~cabin | (np.abs(u) < 0.82 - 0.25 * (v - body_top) / (roof - body_top))
    paint = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] + rng.uniform(-10, 10, 3)
    rgb = np.broadcast_to(paint, u.shape + (3,)).copy() * (1 - 0.15 * (v < 0.2))[..., None]
    rear_window = cabin & (np.abs(u) < 0.62) & (v < roof - 0.06) & (v > body_top + 0.05)
    rgb[rear_window] = np.array([40, 48, 60]) + 10 * (u[rear_window, None] > 0.2)
    lights = (np.abs(np.abs(u) - 0.8) < 0.12) & (np.abs(v - body_top + 0.1) < 0.06)
    rgb[lights] = (200, 20, 20)
    wheels = (np.abs(np.abs(u) - 0.72) < 0.2) & (v < 0.12)
    rgb[wheels] = (20, 20, 22)
    plate = (np.abs(u) < 0.2) & (np.abs(v - 0.25) < 0.05)
    rgb[plate] = (235, 235, 235)
    canvas.paint(shape, rgb, CAR, window)


def _person(canvas: _Canvas, camera: _Camera, lateral: float, depth: float) -> None:
    rng = canvas.rng
    scale = camera.focal / depth
    tall = rng.uniform(1.0, 1.25)
    x, ground = camera.x(lateral, depth), camera.y(0, depth)
    window, yy, xx = canvas.box(x - 0.25 * scale, x + 0.25 * scale, camera.y(tall, depth), ground)
    if not yy.size:
        return
    u, v = (xx - x) / scale, (ground - yy) / scale
    head = (u / 0.8) ** 2 + (v - tall + 0.1) ** 2 < 0.1**2
    torso = (np.abs(u) < 0.21) & (v > 0.5 * tall) & (v < tall - 0.18)
    legs = (np.abs(np.abs(u) - 0.08) < 0.065) & (v <= 0.5 * tall)
    rgb = np.zeros(u.shape + (3,), np.float32)
    rgb[head] = np.array([225, 180, 150]) + rng.uniform(-50, 10)
    rgb[torso] = _SHIRT_COLOURS[rng.integers(len(_SHIRT_COLOURS))]
    rgb[legs] = np.array([40, 45, 70]) + rng.uniform(-20, 40)
    canvas.paint(head | torso | legs, rgb, PERSON, window)


def _static_box(canvas: _Canvas, camera: _Camera, lateral: float, depth: float) -> None:
    """A bin or crate on the sidewalk: Cityscapes' "static" (label id 4, ignored)."""
    rng = canvas.rng
    scale = camera.focal / depth
    half, tall = rng.uniform(0.2, 0.4), rng.uniform(0.5, 0.9)
    x = camera.x(lateral, depth)
    window, yy, xx = canvas.box(x - half * scale, x + half * scale, camera.y(tall, depth), camera.y(0, depth))
    colour = np.array([100, 90, 60]) + rng.uniform(-30, 60, 3)
    canvas.paint(np.ones(yy.shape, bool), colour, STATIC, window)


def _ego_vehicle(canvas: _Canvas) -> None:
    """The bonnet of the recording car along the bottom edge (label id 1, ignored)."""
    rng = canvas.rng
    height = canvas.height * rng.uniform(0.06, 0.12)
    curve = canvas.height - height + 0.5 * height * ((canvas.xx - canvas.width / 2) / (canvas.width / 2)) ** 2
    colour = np.array([30, 32, 38]) + rng.uniform(0, 40) + 8 * canvas.noise(10)[..., None]
    canvas.paint(canvas.yy > curve, colour, EGO_VEHICLE)


def render_street_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 256)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: a (H, W, 3) uint8 RGB image and its (H, W) uint8 Cityscapes label-id map."""
    height, width = size
    canvas = _Canvas(height, width, rng)
    camera = _Camera(height * rng.uniform(0.36, 0.5), width * rng.uniform(0.38, 0.62), width * rng.uniform(0.55, 0.7))
    road_half = rng.uniform(1.6, 2.6)
    offset = rng.uniform(-0.6, 0.6)
    left, right = -road_half + offset, road_half + offset
    widths = rng.uniform(1.0, 2.4, 2)
    grass = rng.uniform(0.5, 2.5, 2) * (rng.uniform(size=2) < 0.6)
    park = rng.uniform(size=2) < 0.15  # trees behind a lawn instead of buildings
    sidewalks, lawns, facade_lateral, pavements = [], [], [], []
    for side, kerb, width, lawn, is_park in zip((-1, 1), (left, right), widths, grass, park):
        outer = kerb + side * width
        pavements.append((side, kerb, outer))
        facade_lateral.append(outer + side * lawn)
        # The outermost strip runs on under the facades (which hide it) or to the horizon (parks).
        if lawn > 0 or is_park:
            sidewalks.append((kerb, outer))
            lawns.append((outer, side * 1e4))
        else:
            sidewalks.append((kerb, side * 1e4))
    street = {
        "road": (left, right),
        "centre_line": (left + right) / 2 if rng.uniform() < 0.7 else 99.0,
        "sidewalks": sidewalks,
        "grass": lawns,
    }

    _sky(canvas, camera)
    _ground(canvas, camera, street)
    for side, lateral, is_park in zip((-1, 1), facade_lateral, park):
        if not is_park:
            _facades(canvas, camera, side, lateral, start_depth=rng.uniform(0.5, 6))
            continue
        spread = np.abs(canvas.xx - camera.vanish_x) / canvas.width  # tree tops rise towards the camera
        top = camera.horizon - canvas.height * (0.03 + rng.uniform(0.3, 0.6) * spread) * (1 + 0.3 * canvas.noise(10))
        band = ((canvas.xx - camera.vanish_x) * side > 0) & (canvas.yy < camera.horizon + 1) & (canvas.yy > top)
        _foliage(canvas, band)

    objects = []  # (depth, draw function, lateral)
    for side, kerb, outer in pavements:
        for _ in range(rng.integers(0, 4)):
            lateral = outer - side * 0.4 if rng.uniform() < 0.5 else kerb + side * 0.5
            objects.append((rng.uniform(2.5, 60), _tree, lateral))
        for _ in range(rng.integers(1, 4)):
            objects.append((rng.uniform(2.5, 50), _pole, kerb + side * 0.3))
        for _ in range(rng.integers(0, 4)):
            lateral = rng.uniform(min(kerb, outer) + 0.3, max(kerb, outer) - 0.3)
            objects.append((rng.uniform(2.5, 16), _person, lateral))
        for _ in range(rng.integers(0, 2)):
            objects.append((rng.uniform(3, 25), _static_box, outer - side * 0.5))
    lanes = [left + 1.0, right - 1.0, (left + right) / 2 - 0.9, (left + right) / 2 + 0.9]
    for _ in range(rng.integers(2, 7)):
        objects.append((3.0 + 30 * rng.uniform() ** 2, _car, lanes[rng.integers(len(lanes))] + rng.uniform(-0.2, 0.2)))
    for depth, draw, lateral in sorted(objects, key=lambda item: -item[0]):  # far to near: near ones occlude
        draw(canvas, camera, lateral, depth)
    if rng.uniform() < 0.4:
        _ego_vehicle(canvas)

    # Lighting and sensor noise.
    gain, bias = rng.uniform(0.75, 1.2), rng.uniform(-15, 15)
    tint = 1 + rng.uniform(-0.06, 0.06, 3)
    image = canvas.rgb * np.float32(gain) * tint.astype(np.float32) + np.float32(bias)
    image += 3 * rng.standard_normal(canvas.rgb.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), canvas.labels


def _file_stem(split: str, index: int) -> tuple[str, str]:
    cities = SPLIT_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index:06d}_000019"


def generate_street_scenes(
    root: str | Path,
    num_train: int = 300,
    num_val: int = 60,
    size: Sequence[int] = (128, 256),
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write `num_train` + `num_val` synthetic street scenes to `root` in the Cityscapes layout (label ids).

    If `root` already holds a generated dataset with the same parameters, nothing is written. A dataset generated
    with other parameters is replaced only with `overwrite=True`; one whose generation was interrupted is generated
    again; a `root` holding other Cityscapes-like files is never touched. Returns `root`.
    """
    root = Path(root)
    height, width = (int(side) for side in size)
    if min(height, width) < 16 or num_train < 0 or num_val < 0:
        raise ValueError(f"generate_street_scenes: size must be at least 16x16 and counts >= 0, got {size}.")
    params = {"num_train": num_train, "num_val": num_val, "size": [height, width], "seed": seed, "version": 3}
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        finished = recorded.pop("complete", True)  # False while generating: an interrupted run is redone
        if finished and recorded == params:
            return root
        if finished and not overwrite:
            raise FileExistsError(
                f"{root} holds synthetic scenes made with other parameters ({manifest}); pass overwrite=True "
                "(--overwrite) to replace them."
            )
        for folder in ("leftImg8bit", "gtFine"):
            shutil.rmtree(root / folder, ignore_errors=True)
        manifest.unlink()
    elif (root / "leftImg8bit").exists() or (root / "gtFine").exists():
        raise FileExistsError(
            f"{root} already holds leftImg8bit/ or gtFine/ not made by this generator; use another folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({**params, "complete": False}))

    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    for split, index in tqdm(jobs, desc="synthetic scenes", disable=not progress):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        image, label_ids = render_street_scene(rng, (height, width))
        city, stem = _file_stem(split, index)
        image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", compress_level=1)
        PIL.Image.fromarray(label_ids).save(label_dir / f"{stem}_gtFine_labelIds.png", compress_level=1)
    manifest.write_text(json.dumps(params))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fpn-seg synthetic", description="Write synthetic street scenes in the Cityscapes layout."
    )
    parser.add_argument("--output", "-o", required=True, help="dataset root (leftImg8bit/ and gtFine/ go here)")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace scenes generated with other parameters")
    args = parser.parse_args(argv)

    def work() -> None:
        root = generate_street_scenes(
            args.output, args.num_train, args.num_val, (args.height, args.width), args.seed,
            overwrite=args.overwrite, progress=True,
        )  # fmt: skip
        size = f"{args.height}x{args.width}"
        print(f"Synthetic street scenes ({args.num_train} train, {args.num_val} val, {size}) in {root}")

    return run_command("synthetic", work, usage=(ValueError,))  # sizes, counts, an output folder in use


__all__ = ["SPLIT_CITIES", "SYNTHETIC_LABEL_IDS", "generate_street_scenes", "main", "render_street_scene"]


if __name__ == "__main__":
    sys.exit(main())
