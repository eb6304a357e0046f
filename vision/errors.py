"""Why an image is refused: one exception with a stable reason code and a sentence for the user."""

from __future__ import annotations

from tunewright import DataError

#: every reason an image (or an example, for its images) is refused, with a short description
#: shown in summaries; the codes are stable (tests, ``--json`` output and summaries use them)
REASONS: dict[str, str] = {
    "reference": "not a usable image reference",
    "data-url": "a malformed data URL",
    "no-folder": "a relative path without a data folder",
    "escapes-folder": "a path outside the data folder",
    "not-found": "file not found",
    "not-a-file": "not a regular file",
    "remote-off": "a remote URL while vision.allow_remote is off",
    "remote-failed": "a remote URL that could not be fetched",
    "too-large": "larger than vision.max_image_bytes",
    "format": "not JPEG, PNG or WEBP",
    "type-mismatch": "a declared type that disagrees with the bytes",
    "bomb": "more pixels than vision.max_pixels (decompression bomb)",
    "corrupt": "corrupt or truncated",
    "animated": "animated",
    "assistant-image": "an image in an assistant turn",
    "too-many-images": "more images than vision.max_images",
    "example-too-large": "more image bytes than vision.max_example_bytes",
    "bad-part": "a malformed image part",
    "screened": "excluded by content screening",
}


class ImageRefused(DataError):
    """An image that is not used for training. ``reason`` is a code of :data:`REASONS`;
    ``str()`` says what is wrong and what is allowed."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r} (known: {', '.join(REASONS)})")
        super().__init__(message)
        self.reason = reason
        self.message = message


__all__ = ["ImageRefused", "REASONS"]
