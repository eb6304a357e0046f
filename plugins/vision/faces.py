"""Face screening: images in which a face is detected are excluded, as the hosted services do.

OpenAI's vision fine-tuning excludes images of people, faces, children and CAPTCHAs from the
training data and trains on the rest; Azure says its screening detects faces (it does not identify
anyone). This plugin does the face part offline with the Haar cascades that ship inside
``opencv-python-headless`` 4.x (``cv2.data.haarcascades``; 5.x ships none): nothing is downloaded.

Detection, per image: grey, longest side at most 640 (faster, and faces of a portrait stay
hundreds of pixels), shortest side at least 100 (a 25-pixel face is enlarged to where the 20-pixel
cascade windows find it), histogram equalised; the frontal cascade ``alt2`` (3 neighbours, scale
step 1.1), then, only when it finds nothing, the profile cascade on the image and its mirror (5
neighbours, scale step 1.2).

Every image with a face is an ``"excluded"`` problem. Screening is the slowest part of
validation by far; ``vision.screening: false`` turns it off. Nothing detects children or CAPTCHAs
offline, so those are not screened. A plugin can screen with any detector through
:func:`tunewright.vision.screen_example`, as this one does.

Its speed, its misses and false alarms on a labelled set, why the profile cascade's settings, and
why not mediapipe's detector: bench/README.md, "Where the code's choices come from".
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunewright import hookimpl
from tunewright.vision import screen_example

# The cascades come with opencv-python-headless (the `vision` extra). Without it this plugin is
# listed as unavailable by `tunewright plugins` rather than failing every command; cv2 itself is
# imported on first use, since importing it costs a third of a second.
if importlib.util.find_spec("cv2") is None:
    raise ModuleNotFoundError(
        "No module named 'cv2' (pip install 'tunewright[vision]')", name="cv2"
    )

FRONTAL = "haarcascade_frontalface_alt2.xml"
PROFILE = "haarcascade_profileface.xml"
LONGEST_SIDE = 640
SHORTEST_SIDE = 100


@dataclass(frozen=True)
class Face:
    """A detected face: its box in the image's own pixels and which cascade found it."""

    left: int
    top: int
    width: int
    height: int
    cascade: str


@functools.lru_cache(maxsize=1)
def _cascades():
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} ships no Haar cascades (install "
            "opencv-python-headless>=4.10,<5)"
        )
    loaded = {}
    for name in (FRONTAL, PROFILE):
        cascade = cv2.CascadeClassifier(folder + name)
        if cascade.empty():
            raise RuntimeError(f"the cascade {folder + name} did not load")
        loaded[name] = cascade
    return cv2, loaded


def detect_faces(
    image: Any,
    *,
    min_neighbors: int = 3,
    profile_min_neighbors: int = 5,
    scale_factor: float = 1.1,
    profile_scale_factor: float = 1.2,
    longest_side: int = LONGEST_SIDE,
) -> list[Face]:
    """The faces in a PIL image (any mode), boxes in its own coordinates."""
    cv2, cascades = _cascades()
    grey = np.asarray(image.convert("L"))
    height, width = grey.shape
    scale = 1.0
    if max(height, width) > longest_side:
        scale = longest_side / max(height, width)
    elif min(height, width) < SHORTEST_SIDE:
        scale = SHORTEST_SIDE / min(height, width)
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(
            grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        )
    grey = cv2.equalizeHist(grey)
    smallest = max(20, min(grey.shape) // 12)

    def run(name: str, picture: np.ndarray, neighbours: int, mirrored: bool = False) -> list[Face]:
        factor = profile_scale_factor if name == PROFILE else scale_factor
        boxes = cascades[name].detectMultiScale(
            picture, scaleFactor=factor, minNeighbors=neighbours, minSize=(smallest, smallest)
        )
        found = []
        for x, y, w, h in boxes:
            if mirrored:
                x = picture.shape[1] - x - w
            found.append(
                Face(
                    round(x / scale),
                    round(y / scale),
                    round(w / scale),
                    round(h / scale),
                    "profile" if name == PROFILE else "frontal",
                )
            )
        return found

    faces = run(FRONTAL, grey, min_neighbors)
    if not faces:
        faces = run(PROFILE, grey, profile_min_neighbors)
    if not faces:
        faces = run(
            PROFILE, np.ascontiguousarray(grey[:, ::-1]), profile_min_neighbors, mirrored=True
        )
    return faces


def screen_faces(image: Any, location: str, config: Any) -> list[str]:
    """A screener for :func:`tunewright.vision.screen_example`: one reason when faces are found."""
    faces = detect_faces(image)
    if not faces:
        return []
    first = faces[0]
    where = f"at x={first.left}, y={first.top}, {first.width}x{first.height}"
    count = f"{len(faces)} faces" if len(faces) > 1 else f"a {first.cascade} face"
    return [
        f"{count} detected ({where}); images of people are excluded, as the hosted "
        "fine-tuning services exclude them"
    ]


@hookimpl
def validate_example(example, config, location):
    return screen_example(example, location, config, screen_faces, name="face screening")


__all__ = ["Face", "detect_faces", "screen_faces", "validate_example"]
