"""Checking images: one image from its bytes, and the images of one example.

One image, in this order (cheap checks first, nothing decoded before it is known to be safe)::

    bytes ≤ vision.max_image_bytes ─► format from the magic bytes: JPEG, PNG or WEBP only
      ─► a data URL's declared type agrees ─► header: width x height ≤ vision.max_pixels
      ─► still, not animated ─► decoded completely (load(), not verify(): a truncated JPEG
      passes verify) ─► EXIF orientation applied ─► converted to RGB / RGBA (reported)

An example: where its images are (``{"image": ref}`` for classification, OpenAI's
``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}`` content parts for chat), at
most ``vision.max_images`` of them, none in an assistant turn, each accepted as above, at most
``vision.max_example_bytes`` together. Each refusal is a :class:`ImageProblem` located at the
example (``data/train.jsonl:17``) whose message starts ``image N (reference):``; its severity is
``"excluded"`` (the example is left out, the job goes on) unless ``vision.on_refused`` is
``error``.

Animated images are refused, not cut to their first frame: the hosted services take still images
only (OpenAI lists "non-animated GIF" for inference and no animation for fine-tuning), and a
first frame silently drops what the rest of the animation shows. The message says how to fix it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tunewright import Problem

from .errors import ImageRefused
from .images import ImageSource, read_reference, reference_kind, shorten
from .settings import DETAILS, VisionSettings, settings_of

#: the formats accepted, as Pillow names them
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
ALLOWED_TEXT = "JPEG, PNG or WEBP"

#: media types a data URL may declare for each accepted format
DECLARED_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
}

#: the key under which an example carries where its images are read from: ``root`` (the data
#: folder relative paths resolve against) and, once the vision transform ran, the job's reading
#: settings and limits (:data:`READING_KEYS`), since
#: ``Task.tokenize`` receives the example alone
SOURCE_KEY = "image_source"

#: what an example carries of the job's settings (``image_source``), so that ``load_images``
#: applies at tokenize time exactly the limits validation applied
READING_KEYS = (
    "allow_remote",
    "remote_timeout",
    "max_images",
    "max_image_bytes",
    "max_example_bytes",
    "max_pixels",
)
_ORIENTATION = 0x0112
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckedImage:
    """An accepted image, decoded. ``image`` is RGB or RGBA with its EXIF orientation applied;
    ``width``/``height`` are its size after that; ``mode`` is the mode the file had and
    ``converted`` whether it was converted; ``nbytes`` is the size of the encoded bytes."""

    image: Image.Image
    format: str
    width: int
    height: int
    mode: str
    nbytes: int
    converted: bool = False
    oriented: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> str | None:
    """The format the bytes are in, from their first bytes (magic numbers), or ``None`` when they
    are nothing recognisable. Knows the accepted formats and the common refused ones, so that a
    refusal can name what the file really is."""
    head = data[:64]
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(data) > 14:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:5] == b"%PDF-":
        return "PDF"
    if head[4:8] == b"ftyp":
        box = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {data[i : i + 4] for i in range(16, min(box, 64), 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC"
        if brands & {b"mif1", b"msf1"}:
            return "HEIF"
        return "ISO media (video)"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    text = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in text:
        return "SVG"
    return None


def check_image(
    data: bytes,
    settings: VisionSettings | Any = None,
    *,
    declared_type: str | None = None,
    declared: bool = False,
) -> CheckedImage:
    """Accept one image from its bytes, or raise :class:`ImageRefused` saying why.

    ``declared_type`` is the media type a data URL declares; with ``declared=True`` (a data URL)
    it must name the format the bytes are in. Nothing global is changed: Pillow's own
    decompression-bomb warning is silenced for this call only, and ``vision.max_pixels`` is
    checked from the header before anything is decoded.
    """
    settings = settings_of(settings)
    if len(data) > settings.max_image_bytes:
        raise ImageRefused(
            "too-large",
            f"{len(data):,} bytes, larger than vision.max_image_bytes "
            f"{settings.max_image_bytes:,} (allowed: at most that per image)",
        )
    if not data:
        raise ImageRefused(
            "corrupt", f"the image is empty: 0 bytes (allowed: {ALLOWED_TEXT} images)"
        )
    found = sniff_format(data)
    if found not in ALLOWED_FORMATS:
        what = (
            f"the bytes are {_article(found)} {found} file"
            if found
            else f"the bytes are not an image format read here (they start {data[:8].hex(' ')})"
        )
        raise ImageRefused(
            "format",
            f"{what}, whatever its name or declared type says "
            f"(allowed: {ALLOWED_TEXT}; convert it, e.g. to PNG)",
        )
    if declared:
        expected = DECLARED_TYPES.get(declared_type or "")
        if expected != found:
            said = f"declares {declared_type}" if declared_type else "declares no media type"
            raise ImageRefused(
                "type-mismatch",
                (
                    f"the data URL {said}, but its bytes are a {found} image (allowed: a data URL "
                    f"whose type matches its bytes: data:{_media_type(found)};base64,...)"
                ),
            )
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning would only repeat it on stderr.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[found])
    except Image.DecompressionBombError as exc:
        raise ImageRefused(
            "bomb",
            (
                f"its header claims more pixels than Pillow opens at all ({exc}); refused before "
                f"decoding, as a decompression bomb (allowed: at most vision.max_pixels "
                f"{settings.max_pixels:,} pixels)"
            ),
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused(
            "corrupt",
            f"the {found} header cannot be read: {exc} (allowed: complete {ALLOWED_TEXT} files)",
        ) from None
    width, height = image.size
    if width * height > settings.max_pixels:
        raise ImageRefused(
            "bomb",
            (
                f"{width:,} x {height:,} = {width * height:,} pixels in a {len(data):,}-byte file, more "
                f"than vision.max_pixels {settings.max_pixels:,}; refused before decoding, as a "
                "decompression bomb (allowed: at most that many pixels)"
            ),
        )
    frames = getattr(image, "n_frames", 1)
    if getattr(image, "is_animated", False) and frames > 1:
        kind = "PNG (APNG)" if found == "PNG" else found
        raise ImageRefused(
            "animated",
            (
                f"an animated {kind} of {frames} frames; only still images are trained on, as the "
                f"hosted services take them (allowed: a still {ALLOWED_TEXT}; save the frame you mean)"
            ),
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        what = (
            "the file is truncated: it ends before the image does"
            if "truncated" in str(exc)
            else "the image data is corrupt"
        )
        raise ImageRefused(
            "corrupt",
            f"the {found} image does not decode: {what} (Pillow: {exc}; "
            f"allowed: complete {ALLOWED_TEXT} files)",
        ) from None
    mode = image.mode
    oriented = False
    orientation = image.getexif().get(_ORIENTATION) if found in ALLOWED_FORMATS else None
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        image = ImageOps.exif_transpose(image)
        oriented = True
    image, converted = _to_rgb(image)
    return CheckedImage(
        image, found, image.width, image.height, mode, len(data), converted, oriented
    )


def _article(name: str) -> str:
    return "an" if name[0] in "AEFHILMNORSX" else "a"


def _media_type(fmt: str) -> str:
    return {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}[fmt]


def _to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """RGB or RGBA (with transparency); 16-bit grey is scaled, not clipped."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image, False
    if mode in ("LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA"), True
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if mode != "F" and values.max(initial=0) > 255 else 255.0
        scaled = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB"), True
    return image.convert("RGB"), True


def check_reference(
    reference: Any, *, root: str | Path | None = None, settings: VisionSettings | Any = None
) -> CheckedImage:
    """:func:`~tunewright.vision.read_reference` then :func:`check_image`: the whole check of one
    referenced image. Raises :class:`ImageRefused`."""
    settings = settings_of(settings)
    source: ImageSource = read_reference(reference, root=root, settings=settings)
    return check_image(
        source.data,
        settings,
        declared_type=source.declared_type,
        declared=source.kind == "data-url",
    )


# ---------------------------------------------------------------------------------------------
# Images of an example
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """One image of an example, as written. ``number`` counts the example's images from 1 (the
    ``image N`` of messages); ``reference`` is the URL, data URL or path (``None`` when the part
    is malformed: ``problem`` then holds ``(reason, message)``); ``detail`` is the image's own
    ``low``/``high``/``auto`` (``None``: not given); ``role``, ``message`` and ``part`` say where
    it is in a chat example (``None`` for a classification example's ``image``)."""

    number: int
    reference: Any
    detail: str | None = None
    role: str | None = None
    message: int | None = None
    part: int | None = None
    problem: tuple[str, str] | None = None

    @property
    def shown(self) -> str:
        return shorten(self.reference) if self.reference is not None else "malformed"


_IMAGE_PART_TYPES = ("image", "input_image", "image_file")


def image_refs(example: Any) -> list[ImageRef]:
    """Every image of an example, in order: the ``image`` of a classification example
    (``{"image": ref, "label": ..., "detail": ...}``) or the ``image_url`` parts of a chat
    example's messages. Malformed parts are returned with their ``problem`` set, not raised."""
    if not isinstance(example, dict):
        return []
    refs: list[ImageRef] = []
    if "image" in example:
        detail = example.get("detail")
        problem = _detail_problem(detail, "the example's 'detail'")
        reference = example["image"]
        if not isinstance(reference, str):
            problem = problem or (
                "reference",
                "'image' must be a reference string (a path, a data URL "
                f"or an http(s) URL), got {type(reference).__name__}",
            )
            reference = None
        refs.append(ImageRef(1, reference, detail if problem is None else None, problem=problem))
    messages = example.get("messages")
    if not isinstance(messages, list):
        return refs
    for m, message in enumerate(messages, start=1):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        role = message.get("role")
        for p, part in enumerate(content, start=1):
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in _IMAGE_PART_TYPES:
                refs.append(
                    ImageRef(
                        len(refs) + 1,
                        None,
                        role=role,
                        message=m,
                        part=p,
                        problem=(
                            "bad-part",
                            f"message {m} part {p} is a {{'type': {kind!r}}} part; write images as "
                            "{'type': 'image_url', 'image_url': {'url': ..., 'detail': ...}}",
                        ),
                    )
                )
                continue
            if kind != "image_url":
                continue
            body = part.get("image_url")
            where = f"message {m} part {p}"
            if not isinstance(body, dict) or not isinstance(body.get("url"), str):
                refs.append(
                    ImageRef(
                        len(refs) + 1,
                        None,
                        role=role,
                        message=m,
                        part=p,
                        problem=(
                            "bad-part",
                            f"{where}: 'image_url' must be an object with a 'url' string "
                            "({'url': 'data:image/png;base64,...' or a path, 'detail': "
                            "'low' | 'high' | 'auto'})",
                        ),
                    )
                )
                continue
            detail = body.get("detail")
            problem = _detail_problem(detail, f"{where}: 'detail'")
            refs.append(
                ImageRef(
                    len(refs) + 1,
                    body["url"],
                    detail if problem is None else None,
                    role=role,
                    message=m,
                    part=p,
                    problem=problem,
                )
            )
    return refs


def _detail_problem(detail: Any, where: str) -> tuple[str, str] | None:
    if detail is None or detail in DETAILS:
        return None
    return ("bad-part", f"{where} is {detail!r} (allowed: {', '.join(DETAILS)})")


def example_root(example: Any, location: str | None = None) -> str | None:
    """The folder an example's relative image paths resolve against: the one its dataset format
    or the vision transform recorded (``example["image_source"]["root"]``), else the folder of
    the data file named by ``location`` (``data/train.jsonl:17``; for a folder of images, the
    folder itself) when that file or folder exists, else ``None``."""
    source = example.get(SOURCE_KEY) if isinstance(example, dict) else None
    if isinstance(source, dict) and isinstance(source.get("root"), str):
        return source["root"]
    if not location:
        return None
    path, _, line = location.rpartition(":")
    where = Path(path if path and line.isdigit() else location)
    if where.is_dir():
        return os.path.abspath(where)
    # only a data file that exists says where its images are ("example 3" says nothing)
    return os.path.abspath(where.parent) if where.is_file() else None


def reading_settings(example: Any, settings: VisionSettings | Any = None) -> VisionSettings:
    """``settings`` with the reading settings an example carries (``image_source``) applied."""
    settings = settings_of(settings)
    source = example.get(SOURCE_KEY) if isinstance(example, dict) else None
    if not isinstance(source, dict):
        return settings
    carried = {key: source[key] for key in READING_KEYS if key in source}
    return settings.model_copy(update=carried) if carried else settings


@dataclass(frozen=True)
class ImageProblem(Problem):
    """A :class:`tunewright.Problem` about an image, with its refusal ``reason`` (a code of
    :data:`~tunewright.vision.REASONS`) and the image ``number`` (``None``: the example's images
    as a whole)."""

    reason: str = "corrupt"
    image: int | None = None


@dataclass
class ExampleImage:
    """An accepted image of an example: where it is (``ref``) and the decoded image (``checked``)."""

    ref: ImageRef
    checked: CheckedImage

    @property
    def image(self) -> Image.Image:
        return self.checked.image

    def detail(self, job_detail: str | None = None) -> str:
        """``low`` or ``high`` for this image: ``job_detail`` (``vision.detail``) over the image's
        own, ``auto`` resolved by size (:func:`~tunewright.vision.resolve_detail`)."""
        from .detail import resolve_detail

        return resolve_detail(job_detail or self.ref.detail, self.checked.size)


@dataclass
class ExampleCheck:
    """What checking one example found: the images accepted and the problems (refusals)."""

    images: list[ExampleImage] = field(default_factory=list)
    problems: list[ImageProblem] = field(default_factory=list)
    refs: list[ImageRef] = field(default_factory=list)


def inspect_example(
    example: Any, location: str = "example", config: Any = None, *, root: str | Path | None = None
) -> ExampleCheck:
    """Check every image of an example and keep what was decoded: the engine-facing
    :func:`check_example` and :func:`~tunewright.vision.summarize` are both built on this.
    ``root`` overrides :func:`example_root`."""
    settings = reading_settings(example, config)
    refs = image_refs(example)
    result = ExampleCheck(refs=refs)
    if not refs:
        return result
    root = root if root is not None else example_root(example, location)
    severity = "error" if settings.on_refused == "error" else "excluded"

    def refuse(reason: str, message: str, number: int | None) -> None:
        result.problems.append(
            ImageProblem(location, message, severity, reason=reason, image=number)
        )

    if len(refs) > settings.max_images:
        refuse(
            "too-many-images",
            f"{len(refs)} images, more than vision.max_images "
            f"{settings.max_images} (allowed: at most {settings.max_images} "
            "images per example)",
            None,
        )
    total = 0
    for ref in refs:
        try:
            if ref.problem is not None:
                raise ImageRefused(*ref.problem)
            if ref.role == "assistant":
                raise ImageRefused(
                    "assistant-image",
                    f"in message {ref.message}, an assistant turn; "
                    "a model learns to write text, not images (allowed: images in "
                    "user and system turns)",
                )
            checked = check_reference(ref.reference, root=root, settings=settings)
        except ImageRefused as exc:
            refuse(exc.reason, f"image {ref.number} ({ref.shown}): {exc.message}", ref.number)
            continue
        total += checked.nbytes
        result.images.append(ExampleImage(ref, checked))
    if total > settings.max_example_bytes:
        refuse(
            "example-too-large",
            f"its images hold {total:,} bytes together, more than "
            f"vision.max_example_bytes {settings.max_example_bytes:,} "
            "(allowed: at most that per example; fewer or smaller images)",
            None,
        )
    return result


def check_example(
    example: Any, location: str, config: Any = None, *, root: str | Path | None = None
) -> list[ImageProblem]:
    """Every image rule for one example; call it from ``Task.validate``.

    Returns a problem per refused image (``image N (reference): reason (allowed)``) and per
    example-wide limit that is exceeded; an empty list when every image is accepted (and for an
    example without images). ``config`` is the job config, a :class:`VisionSettings` or ``None``
    (the defaults). Severity ``"excluded"``, or ``"error"`` under ``vision.on_refused: error``.
    """
    return inspect_example(example, location, config, root=root).problems


def load_images(
    example: Any, config: Any = None, *, root: str | Path | None = None
) -> list[ExampleImage]:
    """The decoded images of a valid example, in order; call it from ``Task.tokenize``.

    Every check of :func:`check_example` runs again (an image that changed since validation is
    refused here, never trained on). Raises the first refusal as :class:`ImageRefused` (a
    :class:`tunewright.DataError`, which the engine reports at the example's location). The
    example's ``image_source`` (set by the image dataset formats and the vision transform) says
    where its paths are and how the job reads images; ``config`` adds to it where given.
    """
    found = inspect_example(example, "example", config, root=root)
    if found.problems:
        first = found.problems[0]
        raise ImageRefused(first.reason, first.message)
    return found.images


def iter_images(
    examples: Sequence[Any], locations: Sequence[str] | None = None, config: Any = None
) -> Iterator[tuple[int, ExampleCheck]]:
    """``(index, ExampleCheck)`` for each example that has images."""
    for index, example in enumerate(examples):
        location = locations[index] if locations is not None else None
        found = inspect_example(example, location or f"example {index + 1}", config)
        if found.refs:
            yield index, found


# ---------------------------------------------------------------------------------------------
# Content screening
# ---------------------------------------------------------------------------------------------

#: ``screener(image, location, config) -> list of reasons (empty: keep)``
Screener = Callable[[Image.Image, str, Any], "Sequence[str] | None"]


def screen_example(
    example: Any,
    location: str,
    config: Any,
    screener: Screener,
    *,
    name: str = "screening",
    root: str | Path | None = None,
) -> list[ImageProblem]:
    """Run a content screener over every accepted image of an example; each reason it gives
    becomes an ``"excluded"`` problem (screening never stops a job). Images refused by the
    checks are skipped here (the task's ``validate`` reports them). Nothing runs when
    ``vision.screening`` is false. A screening plugin calls this from ``validate_example``."""
    settings = settings_of(config)
    if not settings.screening or not image_refs(example):
        return []
    problems: list[ImageProblem] = []
    for item in inspect_example(example, location, config, root=root).images:
        reasons = screener(item.image, f"{location}: image {item.ref.number}", config) or []
        for reason in reasons:
            problems.append(
                ImageProblem(
                    location,
                    (
                        f"image {item.ref.number} ({item.ref.shown}): excluded by {name}: {reason} "
                        "(turn screening off with vision.screening: false)"
                    ),
                    "excluded",
                    reason="screened",
                    image=item.ref.number,
                )
            )
    return problems


def has_images(example: Any) -> bool:
    """Whether an example holds any image (well-formed or not)."""
    return bool(image_refs(example))


def local_path(reference: Any) -> bool:
    """Whether a reference is a local path (not a data URL, not a URL)."""
    return isinstance(reference, str) and reference_kind(reference.strip()) == "path"


__all__ = [
    "CheckedImage",
    "check_image",
    "check_reference",
    "sniff_format",
    "ImageRef",
    "image_refs",
    "ImageProblem",
    "ExampleImage",
    "ExampleCheck",
    "inspect_example",
    "check_example",
    "load_images",
    "iter_images",
    "example_root",
    "reading_settings",
    "screen_example",
    "Screener",
    "has_images",
    "local_path",
    "SOURCE_KEY",
    "ALLOWED_FORMATS",
    "DECLARED_TYPES",
]
