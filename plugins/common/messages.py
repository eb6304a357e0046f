"""The rules of a conversation (OpenAI's ``messages``), for every task that trains on one.

What a message may hold differs by task (text only, or images too): the caller says what counts
as content; the roles, the types and the order of turns are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunewright import DataError
from tunewright.plugins.common.records import type_name

ROLES = ("system", "user", "assistant")
ALLOWED_ROLES = ", ".join(ROLES)


def image_parts(content: Any) -> int:
    """How many non-text parts (images...) a message's content holds."""
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") != "text")


def text_of(content: Any) -> str:
    """The text of a message: the string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def has_text_or_parts(content: Any) -> bool:
    """Text that is not blank, or a part that is not text."""
    return bool(text_of(content).strip()) or image_parts(content) > 0


def conversation_problems(
    messages: Any,
    *,
    example: str = "a chat example",
    no_messages: str = "a chat example needs at least a user and an assistant message",
    has_content: Callable[[Any], bool] = has_text_or_parts,
    content: str = "text",
) -> list[str]:
    """What is wrong with one conversation as a whole, each a sentence with what is allowed:
    roles, content types, empty turns (``has_content`` says what is not empty: ``content``
    names it), a system message after the first, and the order of turns. ``example`` names the
    kind of example and ``no_messages`` what it needs, for the messages."""
    if not isinstance(messages, list) or not messages:
        return [f"no messages ({no_messages})"]
    problems = []
    roles = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            problems.append(
                f"message {number}: expected an object with role and content, got "
                f"{type_name(message)}"
            )
            roles.append(None)
            continue
        role = message.get("role")
        roles.append(role)
        if role not in ROLES:
            problems.append(f"message {number}: unknown role {role!r} (allowed: {ALLOWED_ROLES})")
            continue
        value = message.get("content")
        if not isinstance(value, (str, list)):
            problems.append(
                f"message {number} ({role}): content must be text or a list of content "
                f"parts, got {type_name(value)}"
            )
        elif not has_content(value):
            problems.append(
                f"message {number} ({role}): empty content (every message needs {content})"
            )
        if role == "system" and number > 1:
            problems.append(
                f"message {number}: a system message after the first message "
                "(a system message is allowed only first)"
            )
    if "assistant" not in roles:
        problems.append(f"no assistant message ({example} needs an assistant reply to learn from)")
    elif roles[-1] in ROLES and roles[-1] != "assistant":
        problems.append(
            f"the last message is from {roles[-1]} (a conversation must end with "
            "an assistant message; nothing after it would be learnt)"
        )
    return problems


def rendered_turns(messages: list[dict], renderer: Any) -> list[tuple[str, bool, int]]:
    """The conversation rendered by ``renderer.apply_chat_template`` (a tokenizer or a processor)
    as ``(text, trained, messages rendered)`` pieces: before each assistant turn the prompt (not
    trained), then the turn itself (trained). Raises :class:`tunewright.DataError` for a template
    that does not render turn by turn (a prefix that changes when a turn is added)."""
    pieces: list[tuple[str, bool, int]] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = renderer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        full = renderer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise DataError(
                "the model's chat template does not render conversations turn by turn "
                "(a prefix changes when a turn is added); use a template that does"
            )
        pieces.append((prompt[len(rendered) :], False, i))
        pieces.append((full[len(prompt) :], True, i + 1))
        rendered = full
    return [piece for piece in pieces if piece[0]]


__all__ = [
    "ROLES",
    "ALLOWED_ROLES",
    "image_parts",
    "text_of",
    "has_text_or_parts",
    "conversation_problems",
    "rendered_turns",
]
