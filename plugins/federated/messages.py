"""Messages to and from the sites on a Flower ``Grid``: push and pull within a deadline, the state
as named arrays and back, a reply's site name and figures. Used by the plain rounds
(:mod:`federation`) and the SecAgg+ rounds (:mod:`secure`) alike."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

#: seconds between two pulls of the same reply
POLL_SECONDS = 0.5


def exchange(grid: Any, messages: list[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and pull replies until all arrived or ``timeout`` seconds passed.

    Each reply is pulled on its own, in a thread of its own: Flower's ``pull_messages`` keeps
    retrying a reply whose upload a site did not finish (it was killed while sending) for as long
    as the SuperLink keeps the message (minutes), and pulled together that one would hold every
    other reply past the deadline. A pull still blocked at the deadline is left to end by itself.

    A reply the SuperLink writes itself (``Node Unavailable`` for a site that stopped sending
    heartbeats) comes from the SuperLink's node id: each reply is tagged with the node it answers
    for (``metadata.dst_node_id`` of the message it replies to) in ``reply.answering_node``."""
    ids = list(grid.push_messages(messages))
    node_of = {i: m.metadata.dst_node_id for i, m in zip(ids, messages) if i}
    pending = {i for i in ids if i}
    deadline = time.monotonic() + timeout
    arrived: queue.Queue = queue.Queue()
    in_flight: set[str] = set()
    next_pull = dict.fromkeys(pending, 0.0)
    replies: list[Message] = []

    def pull(message_id: str) -> None:
        try:
            arrived.put((message_id, list(grid.pull_messages([message_id]))))
        except Exception as exc:  # raised again in the calling thread
            arrived.put((message_id, exc))

    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        for message_id in pending - in_flight:
            if now >= next_pull[message_id]:
                in_flight.add(message_id)
                threading.Thread(
                    target=pull, args=(message_id,), name="tunewright-pull", daemon=True
                ).start()
        try:
            message_id, got = arrived.get(
                timeout=max(0.01, min(POLL_SECONDS, deadline - time.monotonic()))
            )
        except queue.Empty:
            continue
        in_flight.discard(message_id)
        next_pull[message_id] = time.monotonic() + POLL_SECONDS
        if isinstance(got, Exception):
            raise got
        for reply in got:
            reply.answering_node = node_of.get(
                reply.metadata.reply_to_message_id, reply.metadata.src_node_id
            )
            if reply.metadata.reply_to_message_id in pending:
                pending.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
    return replies


def to_arrays(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def to_state(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def cast_floats(state: Mapping[str, np.ndarray], dtype: str | np.dtype) -> dict[str, np.ndarray]:
    """``state`` with its floating-point arrays in ``dtype`` (the rest as they are)."""
    return {
        k: v.astype(dtype) if np.asarray(v).dtype.kind == "f" and v.dtype != dtype else v
        for k, v in state.items()
    }


def in_dtypes_of(
    state: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A site's reply in the dtypes its arrays came in (``federated.transfer_dtype``), the
    floating-point ones cast; a name the server did not send is left as it is (and refused there)."""
    return {
        k: v.astype(received[k].dtype)
        if k in received
        and np.asarray(v).dtype.kind == "f"
        and received[k].dtype.kind == "f"
        and v.dtype != received[k].dtype
        else v
        for k, v in state.items()
    }


def metrics_of(reply: Message) -> dict[str, Any]:
    records = reply.content.metric_records
    return dict(next(iter(records.values()))) if records else {}


def site_name_of(reply: Message, names: dict[int, str]) -> str:
    """A reply's site name (error replies name it ``[site NAME]``), remembered by node id."""
    node = getattr(reply, "answering_node", reply.metadata.src_node_id)
    if reply.has_error():
        found = re.match(r"\[site (.+?)\] ", reply.error.reason)
        if found:
            names[node] = found.group(1)
    elif "site" in reply.content.config_records:
        names[node] = str(reply.content["site"].get("name", node))
    return names.get(node, f"node {node}")
