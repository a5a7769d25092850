"""Motion detection with numpy: a picture's luma, scaled down, against a running
background (docs/EVENTS.md).

Each sampled picture (a passthrough camera's keyframes, or ``sample_fps`` of an encoded
camera's decoded pictures):

    luma (the Y plane, no conversion) -> block means, ``width`` cells across
    |cell - background| > threshold, inside the zones and outside the masks
    changed part >= min_area                                     motion
    changed part >= LIGHTING_CHANGE                              the light changed (a
                                                                 cloud, the camera's IR
                                                                 switch): no motion, the
                                                                 background starts over
    background += ALPHA x (cell - background), where nothing changed

Block means do the blurring (a 1080p picture at 160 cells is 12 x 12 pixels a cell, so
sensor noise averages out); the background learns only where nothing moved, so a
moving object leaves no trail. ``MotionWatcher`` turns motion into events: one starts at
the first motion and ends ``cooldown`` after the last.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.config.events import MotionConfig, Polygon

#: How fast the background follows a scene without motion (per sampled picture).
ALPHA = 0.25
#: Most of the picture changed at once: light, not motion.
LIGHTING_CHANGE = 0.6

Cells = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


def block_means(luma: npt.NDArray[np.uint8], width: int) -> Cells:
    """The picture as a grid ``width`` cells across (square cells; the edges that do
    not fill a cell left out), each the mean of its pixels."""
    height_px, width_px = luma.shape
    side = max(1, width_px // width)
    rows, columns = height_px // side, width_px // side
    cropped = luma[: rows * side, : columns * side]
    summed = cropped.reshape(rows, side, columns, side).sum(axis=(1, 3), dtype=np.uint32)
    means: Cells = (summed / np.float32(side * side)).astype(np.float32)
    return means


def rasterize(polygons: tuple[Polygon, ...], rows: int, columns: int) -> Mask:
    """The cells whose centre is inside any of the polygons (even-odd rule), in
    fractions of the picture."""
    inside = np.zeros((rows, columns), dtype=np.bool_)
    ys, xs = np.mgrid[0:rows, 0:columns]
    x = (xs + 0.5) / columns
    y = (ys + 0.5) / rows
    for polygon in polygons:
        hit = np.zeros((rows, columns), dtype=np.bool_)
        corners = len(polygon)
        for index in range(corners):
            (x1, y1), (x2, y2) = polygon[index], polygon[(index - 1) % corners]
            if y1 == y2:
                continue
            crosses = (y1 > y) != (y2 > y)
            at_x = (x2 - x1) * (y - y1) / (y2 - y1) + x1
            hit ^= crosses & (x < at_x)
        inside |= hit
    return inside


class MotionDetector:
    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._background: Cells | None = None
        self._watched: Mask | None = None
        self.samples = 0
        self.lighting_changes = 0
        #: The changed part of the watched picture at the last sample.
        self.last_area = 0.0

    def watched(self, rows: int, columns: int) -> Mask:
        if self._watched is None or self._watched.shape != (rows, columns):
            config = self.config
            zones = (
                rasterize(config.zones, rows, columns)
                if config.zones
                else np.ones((rows, columns), dtype=np.bool_)
            )
            self._watched = zones & ~rasterize(config.masks, rows, columns)
        return self._watched

    def sample(self, luma: npt.NDArray[np.uint8]) -> bool:
        """Whether this picture shows motion against the background."""
        self.samples += 1
        cells = block_means(luma, self.config.width)
        background = self._background
        if background is None or background.shape != cells.shape:
            self._background = cells
            return False
        watched = self.watched(*cells.shape)
        count = int(watched.sum())
        if not count:
            return False
        changed = (np.abs(cells - background) > self.config.threshold) & watched
        area = float(changed.sum()) / count
        self.last_area = area
        if area >= LIGHTING_CHANGE:
            self.lighting_changes += 1
            self._background = cells
            return False
        still = ~changed
        background[still] += ALPHA * (cells[still] - background[still])
        return area >= self.config.min_area


def luma_of(frame: object) -> npt.NDArray[np.uint8]:
    """The Y plane of a decoded PyAV picture (any planar YUV format), without a copy."""
    plane = frame.planes[0]  # type: ignore[attr-defined]
    width, height = frame.width, frame.height  # type: ignore[attr-defined]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[:height, :width]


class MotionWatcher:
    """Motion into events: ``update`` after each sample says what changed."""

    def __init__(self, config: MotionConfig) -> None:
        self.detector = MotionDetector(config)
        self.cooldown_ms = int(config.cooldown * 1000)
        self.open_since_ms: int | None = None
        self.last_motion_ms: int | None = None

    def update(self, moved: bool, at_ms: int) -> str | None:
        """ "start" when motion begins an event, "end" when the cooldown has passed
        since the last motion (the event ends at that last motion), else None."""
        if moved:
            self.last_motion_ms = at_ms
            if self.open_since_ms is None:
                self.open_since_ms = at_ms
                return "start"
            return None
        last = self.last_motion_ms
        if self.open_since_ms is not None and last is not None and at_ms - last >= self.cooldown_ms:
            self.open_since_ms = None
            return "end"
        return None
