"""What ``tunewright validate`` says about the images of a data set.

:func:`summarize` checks every image (the same checks as :func:`~tunewright.vision.check_example`)
and counts: images, formats, sizes, bytes, colour conversions, refusals by reason, and what
reaches the model at the detail each image asks for, at low and at high detail (views, pixels,
OpenAI image tokens). :func:`render_summary` turns that into report lines. A task hands both to
the engine as its ``summarize(examples)`` and ``render_summary(summary)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .checks import ImageProblem, inspect_example
from .detail import detail_costs, resolve_detail
from .errors import REASONS
from .settings import settings_of

_COSTS = ("views", "pixels", "tokens")


def summarize(
    examples: Sequence[Any],
    config: Any = None,
    *,
    locations: Sequence[str] | None = None,
    problems: Iterable[Any] = (),
) -> dict:
    """Facts about the images of ``examples`` (see the module docstring) as a JSON-ready dict;
    ``{"images": 0}`` when no example has an image. ``locations`` (``file:line`` per example) let
    relative paths resolve for examples that do not carry their folder. ``problems``: what else
    validation found; an image that passed the checks but that another rule refused (a screening
    plugin's exclusion, an :class:`ImageProblem` at its example's location) is counted as refused
    for that reason, and its pixels do not reach the model."""
    settings = settings_of(config)
    barred: dict[str, dict[int, str]] = {}
    for problem in problems:
        if (
            isinstance(problem, ImageProblem)
            and problem.image is not None
            and problem.severity in ("error", "excluded")
        ):
            barred.setdefault(problem.location, {}).setdefault(problem.image, problem.reason)
    formats: Counter = Counter()
    converted: Counter = Counter()
    reasons: Counter = Counter()
    details: Counter = Counter()
    costs = {key: {c: 0 for c in _COSTS} for key in ("low", "high", "as_set")}
    widths, heights = [], []
    total_bytes = max_bytes = oriented = images = with_images = refused_examples = 0
    refused_images: set[tuple[int, int]] = set()
    for index, example in enumerate(examples):
        location = locations[index] if locations is not None else f"example {index + 1}"
        found = inspect_example(example, location, config)
        if not found.refs:
            continue
        with_images += 1
        images += len(found.refs)
        passed = {item.ref.number for item in found.images}
        others = {
            number: reason
            for number, reason in barred.get(location, {}).items()
            if number in passed
        }
        if found.problems or others:
            refused_examples += 1
        for problem in found.problems:
            reasons[problem.reason] += 1
            if problem.image is not None:
                refused_images.add((index, problem.image))
        for number, reason in others.items():
            reasons[reason] += 1
            refused_images.add((index, number))
        for item in found.images:
            if item.ref.number in others:
                continue
            checked = item.checked
            formats[checked.format] += 1
            if checked.converted:
                converted[checked.mode] += 1
            oriented += checked.oriented
            widths.append(checked.width)
            heights.append(checked.height)
            total_bytes += checked.nbytes
            max_bytes = max(max_bytes, checked.nbytes)
            requested = settings.detail or item.ref.detail
            details[resolve_detail(requested, checked.size)] += 1
            for key, values in detail_costs(checked.size, requested).items():
                for name in _COSTS:
                    costs[key][name] += values[name]
    if not images:
        return {"images": 0}
    accepted = sum(formats.values())
    summary: dict[str, Any] = {
        "images": images,
        "examples_with_images": with_images,
        "accepted": accepted,
        "formats": dict(formats.most_common()),
        "converted": dict(converted.most_common()),
        "oriented": oriented,
        "bytes": {"total": total_bytes, "max": max_bytes},
        "refused": {
            "images": len(refused_images),
            "examples": refused_examples,
            "reasons": dict(reasons.most_common()),
        },
        "detail": {"low": details["low"], "high": details["high"]},
        "costs": costs,
    }
    if widths:
        summary["width"] = {
            "min": min(widths),
            "max": max(widths),
            "mean": round(sum(widths) / len(widths), 1),
        }
        summary["height"] = {
            "min": min(heights),
            "max": max(heights),
            "mean": round(sum(heights) / len(heights), 1),
        }
    return summary


def refusal_counts(problems: Iterable[Any]) -> dict[str, int]:
    """Refusals by reason among ``problems`` (only :class:`ImageProblem` instances count)."""
    counts = Counter(p.reason for p in problems if isinstance(p, ImageProblem))
    return dict(counts.most_common())


def render_summary(summary: dict) -> list[str]:
    """The report lines of a :func:`summarize` dict (none when there are no images)."""
    if not summary or not summary.get("images"):
        return []
    lines = []
    accepted = summary["accepted"]
    formats = ", ".join(f"{name} {count:,}" for name, count in summary["formats"].items())
    head = (
        f"images: {summary['images']:,} in {_plural(summary['examples_with_images'], 'example')}, "
        f"{accepted:,} accepted" + (f" ({formats})" if formats else "")
    )
    if "width" in summary:
        w, h = summary["width"], summary["height"]
        head += (
            f", {w['min']}x{h['min']} to {w['max']}x{h['max']} (mean {w['mean']:g}x{h['mean']:g})"
            f", {_bytes(summary['bytes']['total'])}"
        )
    lines.append(head)
    if summary["converted"] or summary["oriented"]:
        modes = ", ".join(f"{mode} {count:,}" for mode, count in summary["converted"].items())
        parts = []
        if summary["converted"]:
            parts.append(f"converted to RGB/RGBA: {sum(summary['converted'].values()):,} ({modes})")
        if summary["oriented"]:
            parts.append(f"EXIF orientation applied: {summary['oriented']:,}")
        lines.append("  " + "; ".join(parts))
    refused = summary["refused"]
    if refused["reasons"]:
        why = ", ".join(
            f"{REASONS.get(code, code)} {count:,}" for code, count in refused["reasons"].items()
        )
        lines.append(
            f"  refused: {_plural(refused['images'], 'image')} in "
            f"{_plural(refused['examples'], 'example')} ({why})"
        )
    if accepted:
        costs = summary["costs"]
        detail = summary["detail"]
        lines.append(
            f"  detail: low {detail['low']:,}, high {detail['high']:,} (as set; auto: low when "
            "an image fits within 512x512)"
        )
        low, high, as_set = costs["low"], costs["high"], costs["as_set"]
        ratio = high["pixels"] / low["pixels"] if low["pixels"] else 0.0
        lines.append(
            f"  reaching the model: {_count(as_set['pixels'])} pixels in {as_set['views']:,} views as set; "
            f"{_count(low['pixels'])} at low detail, {_count(high['pixels'])} at high "
            f"({ratio:.1f}x more)"
        )
        lines.append(
            f"  image tokens (OpenAI's count): {as_set['tokens']:,} as set; {low['tokens']:,} at low, "
            f"{high['tokens']:,} at high"
        )
    return lines


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _count(value: int) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:,}"


def _bytes(value: int) -> str:
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:,} bytes"


__all__ = ["summarize", "render_summary", "refusal_counts"]
