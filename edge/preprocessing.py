"""What a bundle needs to turn raw input into model input without transformers: the tokenizer file
and its settings, a chat template reduced to plain strings, or the image processor's settings."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

_MARK = "\u2063{}\u2063"  # invisible separators unlikely to appear in any template


def chat_format(tokenizer) -> dict[str, Any] | None:
    """Reduce the tokenizer's chat template to ``{begin, prefix{role}, suffix, generation_prompt,
    default_system}``, or ``None`` when the template is not of that shape (checked on samples)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    m = [_MARK.format(i) for i in range(4)]
    try:
        full = tokenizer.apply_chat_template(
            [
                {"role": "system", "content": m[0]},
                {"role": "user", "content": m[1]},
                {"role": "assistant", "content": m[2]},
            ],
            tokenize=False,
        )
        with_prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": m[0]}, {"role": "user", "content": m[1]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        no_system = tokenizer.apply_chat_template(
            [{"role": "user", "content": m[1]}], tokenize=False
        )
    except Exception:
        return None
    try:
        begin_sys, rest = full.split(m[0])
        sys_to_user, rest = rest.split(m[1])
        user_to_assistant, suffix = rest.split(m[2])
    except ValueError:
        return None
    if not (sys_to_user.startswith(suffix) and user_to_assistant.startswith(suffix)):
        return None
    after_user = with_prompt.split(m[1])[1]
    if not after_user.startswith(suffix):
        return None
    fmt_user = sys_to_user[len(suffix) :]
    fmt_assistant = user_to_assistant[len(suffix) :]
    # the begin string is what precedes the system prefix; find the system prefix by the user one's shape
    system_prefix = fmt_user.replace("user", "system") if "user" in fmt_user else None
    if system_prefix and begin_sys.endswith(system_prefix):
        begin = begin_sys[: len(begin_sys) - len(system_prefix)]
    else:
        begin, system_prefix = "", begin_sys
    fmt = {
        "begin": begin,
        "prefix": {"system": system_prefix, "user": fmt_user, "assistant": fmt_assistant},
        "suffix": suffix,
        "generation_prompt": after_user[len(suffix) :],
        "default_system": None,
    }
    head = no_system.split(m[1])[0]
    if head != begin + fmt_user:
        default = head[len(begin) :]
        if default.startswith(system_prefix) and default.endswith(suffix + fmt_user):
            fmt["default_system"] = default[
                len(system_prefix) : len(default) - len(suffix + fmt_user)
            ]
        else:
            return None
    # check on conversations of other shapes that the strings reproduce the template exactly
    samples = [
        [{"role": "user", "content": "Hi there"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for sample in samples:
        expected = tokenizer.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
        if render(fmt, sample) != expected:
            return None
    return fmt


def render(fmt: dict[str, Any], messages: list[dict[str, str]]) -> str:
    parts = [fmt["begin"]]
    if messages and messages[0]["role"] != "system" and fmt.get("default_system") is not None:
        parts.append(fmt["prefix"]["system"] + fmt["default_system"] + fmt["suffix"])
    parts += [fmt["prefix"][m["role"]] + m["content"] + fmt["suffix"] for m in messages]
    return "".join(parts) + fmt["generation_prompt"]


def write_text_preprocessing(tokenizer, folder: Path, *, max_length: int) -> dict[str, Any]:
    """Save ``tokenizer.json`` into the bundle folder and describe how to use it (with the chat
    format when the tokenizer has a chat template that reduces to plain strings)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "the bundle needs a fast tokenizer (tokenizer.json); this model's tokenizer is not one"
        )
    (Path(folder) / "tokenizer.json").unlink(missing_ok=True)  # never write through a hard link
    tokenizer.backend_tokenizer.save(str(Path(folder) / "tokenizer.json"))
    eos = tokenizer.eos_token_id
    pre: dict[str, Any] = {
        "kind": "text",
        "tokenizer": "tokenizer.json",
        "max_length": int(
            min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
        ),
        "pad_token_id": int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        ),
        # what the tokenizer does when called on a text (classifiers); generators render prompts
        # with the chat format, whose special tokens are spelled out, and add none
        "add_special_tokens": True,
        "eos_token_ids": [int(eos)] if eos is not None else [],
        "padding_side": "right",
    }
    if getattr(tokenizer, "chat_template", None):
        pre["chat_format"] = chat_format(tokenizer)
    return pre


def write_preprocessing(
    preprocessor, folder: Path, *, max_length: int, config=None
) -> dict[str, Any]:
    """What the bundle needs to turn raw input into model input, from the tuned model's tokenizer,
    image processor, or processor holding both (``.tokenizer`` and ``.image_processor``): the text
    settings (with ``tokenizer.json`` written into ``folder``), the image settings, or the text
    settings with the image ones under ``"image"``. Image settings record the view training cut
    (``views``: the job ``config``'s ``vision.detail`` and the low-detail side)."""
    tokenizer = (
        preprocessor
        if hasattr(preprocessor, "backend_tokenizer")
        else getattr(preprocessor, "tokenizer", None)
    )
    images = (
        preprocessor
        if hasattr(preprocessor, "image_mean")
        else getattr(preprocessor, "image_processor", None)
    )
    if tokenizer is None and images is None:
        raise ValueError(
            f"cannot describe the preprocessing of a {type(preprocessor).__name__}: it is neither a "
            "fast tokenizer, an image processor, nor a processor holding them"
        )
    if tokenizer is None:
        return {**image_preprocessing(images), "views": view_settings(config)}
    pre = write_text_preprocessing(tokenizer, folder, max_length=max_length)
    if images is not None:
        pre["image"] = image_preprocessing(images)
    return pre


def view_settings(config=None) -> dict[str, Any]:
    """How a classifier's training saw each image (:meth:`tunewright.vision` low detail: fit within
    ``low_side`` x ``low_side`` first), with the job's ``vision.detail`` (``None``: by size)."""
    from tunewright.vision import LOW_SIZE, settings_of

    return {"detail": settings_of(config).detail, "low_side": LOW_SIZE}


def image_preprocessing(processor) -> dict[str, Any]:
    """The image processor's settings, as the runtime applies them with pillow and numpy
    (:func:`tunewright.edge.runtime.images.image_settings`); a processor the runtime cannot
    reproduce exactly is refused with a :class:`tunewright.UsageError`."""
    from .runtime.images import UnsupportedProcessor, image_settings

    try:
        return image_settings(processor)
    except UnsupportedProcessor as exc:
        from tunewright import UsageError

        raise UsageError(f"export: {exc}; the bundle must preprocess as training did") from exc


def copy_files(source: Path, target: Path) -> None:
    """Hard-link (or copy) every file of ``source`` into ``target``."""
    for path in Path(source).rglob("*"):
        if path.is_file():
            dest = Path(target) / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.hardlink_to(path)
            except OSError:
                shutil.copy2(path, dest)
