from __future__ import annotations

from pathlib import Path

import pytest
from samples import chat_rows, classification_rows, write_jsonl


@pytest.fixture
def chat_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data" / "chat.jsonl", chat_rows(120))


@pytest.fixture
def classification_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data" / "labels.jsonl", classification_rows(150))
