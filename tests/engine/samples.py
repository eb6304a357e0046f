"""Small learnable datasets for job tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

FRUITS = {
    "apple": "red",
    "banana": "yellow",
    "lime": "green",
    "plum": "purple",
    "orange": "orange",
    "blueberry": "blue",
    "cherry": "red",
    "kiwi": "green",
    "lemon": "yellow",
    "grape": "purple",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable chat task: the colour of a fruit, asked in a few ways."""
    rng = random.Random(seed)
    asks = [
        "What colour is a {}?",
        "Colour of {}?",
        "Tell me the colour of a {}.",
        "{}: which colour?",
    ]
    rows = []
    for i in range(n):
        fruit = rng.choice(sorted(FRUITS))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": rng.choice(asks).format(fruit) + f" (#{i})"},
                    {"role": "assistant", "content": f"A {fruit} is {FRUITS[fruit]}."},
                ]
            }
        )
    return rows


def classification_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentiment from keywords: learnable by a tiny encoder in a few dozen steps."""
    rng = random.Random(seed)
    words = {
        "positive": ["great", "lovely", "excellent", "happy"],
        "negative": ["awful", "terrible", "sad", "bad"],
        "neutral": ["okay", "average", "plain", "fine"],
    }
    fillers = ["the film was", "my day was", "this meal is", "that song sounds"]
    rows = []
    for i in range(n):
        label = rng.choice(sorted(words))
        rows.append(
            {"text": f"{rng.choice(fillers)} {rng.choice(words[label])} number {i}", "label": label}
        )
    return rows
