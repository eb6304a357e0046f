"""The server's rounds: send the state, collect replies within a deadline, check them, aggregate,
evaluate, record.

Flower's ``Strategy.start`` waits for sites without a deadline, polls every 3 s and keeps no
per-site record; this loop drives the same strategy objects (``configure_train``,
``aggregate_train``, ``configure_evaluate``) through the public ``Grid`` API and adds:

- a deadline for ``min_sites`` to connect (``wait_for_sites``) and for replies (``round_timeout``):
  a site that crashed or hangs is left out when the deadline passes, the round goes on;
- every reply checked against what was sent (:mod:`replies`) before it is aggregated;
- a site whose config differs from the server's is refused from its first reply on;
- one record per round: bytes each site received and sent, who was left out and why, timings,
  the scheme's report, the DP noise, site and central metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from tunewright import JobFailed

from .messages import (
    POLL_SECONDS,
    cast_floats,
    exchange,
    metrics_of,
    site_name_of,
    to_arrays,
    to_state,
)
from .replies import describe, reply_problems
from .secure import secure_round
from .strategies import WEIGHT_KEY, build_strategy, noise_stdev

#: an error reply whose reason holds this is a site that refuses the server's config or data
#: (``[site NAME] refused: ...``, see :func:`apps.named_failures`): it is left out from then on
REFUSED_MARK = "] refused: "
#: in a train message's config: clip the update at the site (Flower's client-side DP wrapper is on)
CLIENT_CLIPPING = "client-clipping"
#: a site's figures of the state it received, in its train reply's metrics (``evaluate/loss``...)
EVALUATE_PREFIX = "evaluate/"


def wait_for_sites(grid: Any, count: int, timeout: float, echo: Callable[[str], None]) -> list[int]:
    """Wait until ``count`` sites are connected; a :class:`tunewright.JobFailed` after ``timeout``."""
    deadline = time.monotonic() + timeout
    said = -1
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() >= deadline:
            raise JobFailed(
                f"federated.min_sites: {len(nodes)} of the {count} sites needed had connected after "
                f"{timeout:.0f} s (federated.wait_for_sites); start more sites, check that they reach "
                "the server, or lower min_sites"
            )
        if len(nodes) != said:
            echo(f"waiting for sites: {len(nodes)} of {count} connected")
            said = len(nodes)
        time.sleep(POLL_SECONDS)


def _weighted(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Example-weighted mean of every numeric metric the rows share."""
    rows = [r for r in rows if r.get(WEIGHT_KEY, 0) > 0]
    if not rows:
        return {}
    keys = set.intersection(*(set(r) for r in rows)) - {WEIGHT_KEY}
    total = sum(r[WEIGHT_KEY] for r in rows)
    return {
        k: sum(r[k] * r[WEIGHT_KEY] for r in rows) / total
        for k in sorted(keys)
        if all(isinstance(r[k], (int, float)) for r in rows)
    }


class Federation:
    """One federated training on a Flower ``Grid``: ``run()`` returns the final state."""

    def __init__(
        self,
        grid: Any,
        settings: Any,
        initial: Mapping[str, np.ndarray],
        fingerprint: dict,
        *,
        dp_sites: int,
        central_eval: Callable[[dict[str, np.ndarray]], dict] | None = None,
        on_round: Callable[[dict], None] | None = None,
        echo: Callable[[str], None] = print,
        names: dict[int, str] | None = None,
    ):
        self.grid = grid
        self.settings = settings
        self.initial = dict(initial)
        # what travels: the state in federated.transfer_dtype; the server keeps and aggregates float32
        self.transfer_dtype = np.dtype(settings.transfer_dtype)
        self.expected = describe(self.wire(initial))
        self.fingerprint = fingerprint
        self.dp_sites = dp_sites
        self.central_eval = central_eval
        self.on_round = on_round or (lambda record: None)
        self.echo = echo
        self.strategy, self.inner = build_strategy(settings, dp_sites)
        self.refused: dict[int, str] = {}
        self.names: dict[int, str] = dict(
            names or {}
        )  # known before their first reply: registered keys
        self.connected: set[int] = set()

    def say_connected(self, nodes: list[int]) -> None:
        """Echo the sites that connected or left since the last call."""
        now = set(nodes)
        for node in sorted(now - self.connected):
            self.echo(f"site connected: {self.names.get(node, 'unnamed')} (node {node})")
        for node in sorted(self.connected - now):
            self.echo(f"site gone: {self.names.get(node, 'unnamed')} (node {node})")
        self.connected = now

    def wire(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``state`` as it travels (``federated.transfer_dtype``)."""
        return cast_floats(state, self.transfer_dtype)

    def to_wire(self, arrays: ArrayRecord) -> ArrayRecord:
        return (
            arrays if self.transfer_dtype == np.float32 else to_arrays(self.wire(to_state(arrays)))
        )

    def train_config(self, rnd: int) -> ConfigRecord:
        s = self.settings
        config: dict[str, Any] = {
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "local-steps": s.local_steps,
            "round-timeout": float(s.round_timeout),
            # a deployed site ends once it answered the last round and the server closed
            "rounds": s.rounds,
            # the previous round's aggregate is evaluated by the sites as they get it
            "evaluate-first": bool(s.site_evaluation and rnd > 1),
        }
        if s.privacy is not None and s.privacy.clipping == "client":
            config[CLIENT_CLIPPING] = True
        return ConfigRecord(config)

    def run(self) -> tuple[dict[str, np.ndarray], list[dict]]:
        """Every round; the final state and one record per round.

        A round's record is complete (and handed to ``on_round``) when the sites' evaluation of its
        aggregate is in: it rides on the next round's train replies, and after the last round on
        one evaluate message per site. So a deployed site starts one Flower process per round (and
        one more at the end), not two."""
        s = self.settings
        arrays = to_arrays(self.initial)
        records: list[dict] = []
        pending: dict | None = None
        try:
            for rnd in range(1, s.rounds + 1):
                record, arrays, evaluations = self.round(rnd, arrays)
                if pending is not None:
                    self.finish(pending, evaluations)
                    records.append(pending)
                pending = record
            if pending is not None:
                evaluations = self.evaluate_sites(s.rounds, arrays) if s.site_evaluation else None
                self.finish(pending, evaluations)
                records.append(pending)
                pending = None
        finally:
            if pending is not None:  # a later round failed: what this one did is still recorded
                self.finish(pending, None)
        return to_state(arrays), records

    def finish(self, record: dict, evaluations: list[dict] | None) -> None:
        """Add the sites' evaluation of the round's aggregate and hand the record on."""
        if evaluations is not None:
            ok = [r for r in evaluations if r["status"] == "ok"]
            record["evaluate"] = _weighted(ok)
            record["evaluate_sites"] = sorted(evaluations, key=lambda r: str(r["site"]))
        self.on_round(record)

    def round(self, rnd: int, arrays: ArrayRecord) -> tuple[dict, ArrayRecord, list[dict]]:
        """Train one round; its record, the new state, and the sites' evaluation of the state
        they received (the previous round's aggregate)."""
        s = self.settings
        started = time.monotonic()
        self.say_connected(
            wait_for_sites(self.grid, s.min_sites + len(self.refused), s.wait_for_sites, self.echo)
        )
        # the strategy is handed what travels: FedAdam's step and the DP wrapper's clipping then
        # measure the update from the values the sites received
        messages = [
            m
            for m in self.strategy.configure_train(
                rnd, self.to_wire(arrays), self.train_config(rnd), self.grid
            )
            if m.metadata.dst_node_id not in self.refused
        ]
        if len(messages) < s.min_sites:
            raise JobFailed(
                f"round {rnd}: {len(messages)} site(s) left to train, fewer than "
                f"federated.min_sites ({s.min_sites}); refused: " + "; ".join(self.refused.values())
            )
        self.echo(
            f"round {rnd}/{s.rounds}: training on {len(messages)} site(s)"
            + (" (secure aggregation)" if s.secure_aggregation is not None else "")
        )
        if s.secure_aggregation is not None:
            sites, trained, evaluations, new, reason = self.secure_exchange(rnd, arrays, messages)
        else:
            sites, trained, evaluations, new, reason = self.plain_exchange(rnd, arrays, messages)
        trained_at = time.monotonic()
        for row in sites.values():
            if row["status"] != "ok":
                self.echo(
                    f"round {rnd}: {row['site']} left out ({row['status']}): {'; '.join(row['problems'])}"
                )
        aggregated = new is not None
        if aggregated:
            arrays = new
        if reason:
            self.echo(f"round {rnd}: not aggregated: {reason}")
        record: dict[str, Any] = {
            "round": rnd,
            "aggregated": aggregated,
            "skipped_reason": reason,
            "sites": sorted(sites.values(), key=lambda r: str(r["site"])),
            "train": _weighted(trained),
            "train_seconds_wall": round(trained_at - started, 3),
        }
        if aggregated and self.inner.last_report:
            record["aggregation"] = dict(self.inner.last_report)
        if s.privacy is not None:
            record["privacy"] = {
                "clipping": s.privacy.clipping,
                "noise_multiplier": s.privacy.noise_multiplier,
                "clipping_norm": s.privacy.clipping_norm,
                "sites": self.dp_sites,
                "noise_stdev": noise_stdev(s, self.dp_sites) if aggregated else 0.0,
            }
        if self.central_eval is not None:
            central_started = time.monotonic()
            record["central"] = self.central_eval(to_state(arrays))
            record["central_seconds"] = round(time.monotonic() - central_started, 3)
        record["seconds"] = round(time.monotonic() - started, 3)
        return record, arrays, evaluations

    def plain_exchange(
        self, rnd: int, arrays: ArrayRecord, messages: list[Message]
    ) -> tuple[dict[int, dict], list[dict], list[dict], ArrayRecord | None, str | None]:
        """Send the state, check every reply, aggregate the usable ones. Returns one row per site,
        the usable replies' figures, the sites' evaluations of the state they received, the
        aggregate (``None`` if not aggregated) and why not."""
        s = self.settings
        down = messages[0].content["arrays"].count_bytes() if messages else 0  # as they travel
        asked = {m.metadata.dst_node_id for m in messages}
        replies = exchange(self.grid, messages, s.round_timeout)
        sites: dict[int, dict] = {
            n: {
                "node": n,
                "site": self.names.get(n, f"node {n}"),
                "received_bytes": down,
                "sent_bytes": 0,
                "status": "no reply",
                "problems": [f"no reply within {s.round_timeout:g} s (federated.round_timeout)"],
            }
            for n in asked
        }
        usable, failed, evaluations = [], [], []
        for reply in replies:
            node = getattr(reply, "answering_node", reply.metadata.src_node_id)
            row = sites.setdefault(node, {"node": node, "received_bytes": down, "sent_bytes": 0})
            row["site"] = site_name_of(reply, self.names)
            if reply.has_error():
                reason = reply.error.reason
                row.update(status="failed", problems=[reason])
                if REFUSED_MARK in reason:
                    row["status"] = "refused"
                    self.refused[node] = f"{row['site']}: {reason}"
                failed.append(reply)
                if rnd > 1 and s.site_evaluation:
                    evaluations.append(
                        {"site": row["site"], "status": row["status"], "problems": [reason]}
                    )
                continue
            content = reply.content
            state = to_state(content["arrays"]) if "arrays" in content.array_records else {}
            metrics = metrics_of(reply)
            evaluated = {
                k[len(EVALUATE_PREFIX) :]: v
                for k, v in metrics.items()
                if k.startswith(EVALUATE_PREFIX)
            }
            if evaluated:
                evaluations.append({"site": row["site"], "status": "ok", **evaluated})
            metrics = {k: v for k, v in metrics.items() if not k.startswith(EVALUATE_PREFIX)}
            row["sent_bytes"] = (
                content["arrays"].count_bytes() if "arrays" in content.array_records else 0
            )
            row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            problems = reply_problems(self.expected, state, metrics.get(WEIGHT_KEY))
            if problems:
                row.update(status="dropped", problems=problems)
            else:
                row.update(status="ok", problems=[])
                if self.transfer_dtype != np.float32:  # aggregated in float32
                    content["arrays"] = to_arrays(cast_floats(state, np.float32))
                usable.append(reply)
        new, reason = None, None
        if not usable:
            reason = "no usable reply"
        elif len(usable) < s.min_sites:
            # one site's update alone is that site's state: min_sites counts what is averaged
            reason = (
                f"{len(usable)} usable repl{'y' if len(usable) == 1 else 'ies'}, fewer than federated.min_sites "
                f"({s.min_sites}); aggregation skipped, the state stays as it was"
            )
        elif s.privacy is not None and (
            any(r["status"] == "dropped" for r in sites.values())
            or len(usable) + len(failed) < self.dp_sites
        ):
            # the noise is calibrated for dp_sites clipped updates: averaging fewer would weaken it.
            # Flower's wrapper skips a round with an error reply itself, but only warns when
            # replies are missing (a site past the deadline) and aggregates them anyway.
            reason = (
                f"{len(usable)} usable replies (a reply was dropped or missing) and DP noise is calibrated "
                f"for {self.dp_sites} sites; aggregation skipped, the state stays as it was"
            )
        else:
            # with Flower's DP wrappers an error reply makes the wrapper skip the aggregation
            passed = usable + (failed if s.privacy is not None else [])
            new, _ = self.strategy.aggregate_train(rnd, passed)
            if new is None:
                reason = (
                    (
                        "Flower's DP wrapper skipped the aggregation: a site failed "
                        "(its noise is calibrated for every sampled site)"
                    )
                    if s.privacy
                    else "aggregation returned nothing"
                )
        return sites, [metrics_of(r) for r in usable], evaluations, new, reason

    def secure_exchange(
        self, rnd: int, arrays: ArrayRecord, messages: list[Message]
    ) -> tuple[dict[int, dict], list[dict], list[dict], ArrayRecord | None, str | None]:
        """:meth:`plain_exchange` with SecAgg+ (:mod:`secure`): the server gets only the sites'
        weighted average, then applies its strategy to it (FedAdam's step, for one)."""
        from flwr.app import MetricRecord, RecordDict

        nodes = [m.metadata.dst_node_id for m in messages]
        config = dict(messages[0].content["config"])
        outcome = secure_round(
            self.grid, self.settings, rnd, to_state(arrays), nodes, config, self.names
        )
        evaluations = []
        for node, row in outcome.sites.items():
            refusal = next((p for p in row["problems"] if REFUSED_MARK in p), None)
            if refusal:
                row["status"] = "refused"
                self.refused[node] = f"{row['site']}: {refusal}"
            metrics = outcome.metrics.get(node, {})
            evaluated = {
                k[len(EVALUATE_PREFIX) :]: v
                for k, v in metrics.items()
                if k.startswith(EVALUATE_PREFIX)
            }
            if evaluated:
                evaluations.append({"site": row["site"], "status": "ok", **evaluated})
            elif rnd > 1 and self.settings.site_evaluation and row["status"] != "ok":
                evaluations.append(
                    {"site": row["site"], "status": row["status"], "problems": row["problems"]}
                )
            row.update(
                {
                    k: v
                    for k, v in metrics.items()
                    if not k.startswith(EVALUATE_PREFIX) and isinstance(v, (int, float))
                }
            )
        trained = [
            {k: v for k, v in m.items() if not k.startswith(EVALUATE_PREFIX)}
            for m in outcome.metrics.values()
        ]
        if outcome.state is None:
            return outcome.sites, trained, evaluations, None, outcome.reason
        summed = sum(row["status"] == "ok" for row in outcome.sites.values())
        if summed < self.settings.min_sites:
            return (
                outcome.sites,
                trained,
                evaluations,
                None,
                (
                    f"{summed} site(s) in the sum, fewer than federated.min_sites ({self.settings.min_sites}); "
                    "aggregation skipped, the state stays as it was"
                ),
            )
        total = sum(float(m[WEIGHT_KEY]) for m in trained)
        # the strategy sees the average as one reply carrying every example: its own average of it
        # is itself, and what it adds on top (FedAdam's server step) applies as to plain replies
        average = Message(
            RecordDict(
                {
                    "arrays": to_arrays(outcome.state),
                    "metrics": MetricRecord({WEIGHT_KEY: total, **_weighted(trained)}),
                }
            ),
            dst_node_id=0,
            message_type="train",
        )
        new, _ = self.strategy.aggregate_train(rnd, [average])
        return (
            outcome.sites,
            trained,
            evaluations,
            new,
            None if new is not None else "aggregation returned nothing",
        )

    def evaluate_sites(self, rnd: int, arrays: ArrayRecord) -> list[dict]:
        """Every site's figures of ``arrays`` on its held-out data (after the last round)."""
        started = time.monotonic()
        messages = [
            m
            for m in self.strategy.configure_evaluate(
                rnd, self.to_wire(arrays), self.train_config(rnd), self.grid
            )
            if m.metadata.dst_node_id not in self.refused
        ]
        replies = exchange(self.grid, messages, self.settings.round_timeout)
        rows = []
        for reply in replies:
            name = site_name_of(reply, self.names)
            if reply.has_error():
                rows.append({"site": name, "status": "failed", "problems": [reply.error.reason]})
                continue
            rows.append(
                {
                    "site": name,
                    "status": "ok",
                    **{k: v for k, v in metrics_of(reply).items() if isinstance(v, (int, float))},
                }
            )
        self.echo(
            f"round {rnd}: sites evaluated the final state in {time.monotonic() - started:.1f} s"
        )
        return rows
