"""Text in and out of a bundle: the tokenizer (``tokenizers``, no transformers) and chat prompts.

A chat template is Jinja code that only transformers runs; at export time it is reduced to plain
strings (a prefix per role, one suffix, the generation prompt, a default system message), checked
against the template on sample conversations, and stored in the manifest as ``chat_format``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundle import BundleError


class TextCodec:
    """Encodes text the way the tuned model's tokenizer did, and decodes generated ids."""

    def __init__(self, folder: Path, preprocessing: dict[str, Any]):
        from tokenizers import Tokenizer

        name = preprocessing.get("tokenizer", "tokenizer.json")
        path = Path(folder) / name
        if not path.is_file():
            raise BundleError(f"{folder}: the manifest names tokenizer {name!r}, which is missing")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = int(preprocessing.get("max_length") or 512)
        self.pad_token_id = int(preprocessing.get("pad_token_id") or 0)
        self.add_special_tokens = bool(preprocessing.get("add_special_tokens", True))
        self.chat_format = preprocessing.get("chat_format")
        self.eos_token_ids = [int(i) for i in preprocessing.get("eos_token_ids") or []]

    def encode(
        self, text: str, *, add_special_tokens: bool | None = None, truncate: bool = True
    ) -> list[int]:
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        ids = self.tokenizer.encode(text, add_special_tokens=special).ids
        if truncate and len(ids) > self.max_length:
            if special and len(ids) >= 2:
                # keep the closing special token ([SEP]) as the tuned model's tokenizer does
                ids = ids[: self.max_length - 1] + ids[-1:]
            else:
                ids = ids[: self.max_length]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        fmt = self.chat_format
        if not fmt:
            raise BundleError(
                "this bundle has no chat format (its tokenizer had no chat template "
                "that reduces to plain strings); pass a raw prompt instead"
            )
        roles = fmt["prefix"]
        parts = [fmt.get("begin", "")]
        if (
            messages
            and messages[0].get("role") != "system"
            and fmt.get("default_system") is not None
        ):
            parts.append(roles["system"] + fmt["default_system"] + fmt["suffix"])
        for message in messages:
            role = message.get("role")
            if role not in roles:
                raise BundleError(f"message role {role!r} is not one of {sorted(roles)}")
            parts.append(roles[role] + message.get("content", "") + fmt["suffix"])
        if add_generation_prompt:
            parts.append(fmt["generation_prompt"])
        return "".join(parts)
