"""Pushing messages to the sites and pulling their replies within a deadline (:mod:`messages`),
on a stand-in grid: a reply that Flower keeps retrying does not hold the others back."""

import threading
import time
from types import SimpleNamespace

from tunewright.plugins.federated.messages import exchange


class Grid:
    """Sites ``a`` and ``b`` have replied; ``c`` died while uploading its reply, and pulling it
    blocks (as Flower's ``pull_messages`` retries a half-uploaded reply for minutes)."""

    def __init__(self):
        self.release = threading.Event()
        self.pulls = []

    def push_messages(self, messages):
        return [f"m-{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, ids):
        ids = list(ids)
        self.pulls.append(ids)
        if "m-c" in ids:
            self.release.wait(60)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i, src_node_id=0))
            for i in ids
        ]


def test_a_reply_that_cannot_be_pulled_does_not_hold_the_others_past_the_deadline():
    grid = Grid()
    messages = [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for n in ("a", "b", "c")]
    started = time.monotonic()
    try:
        replies = exchange(grid, messages, timeout=3)
    finally:
        grid.release.set()
    assert 3 <= time.monotonic() - started < 10
    assert sorted(r.answering_node for r in replies) == ["a", "b"]
    assert all(len(ids) == 1 for ids in grid.pulls)  # each reply pulled on its own
