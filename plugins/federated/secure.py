"""Secure aggregation: one round of Flower's SecAgg+ (https://arxiv.org/abs/2205.06117).

With ``federated.secure_aggregation`` the server learns only the example-weighted sum of the sites'
states. In flwr 1.41 SecAgg+ exists on Flower's legacy path only, so this is a second path beside
the Message API one in :mod:`federation`:

- the server runs Flower's ``SecAggPlusWorkflow`` (setup, key sharing, masked vectors, unmasking)
  for one round, driving the small legacy ``Strategy`` below through a ``LegacyContext``;
- each site runs Flower's ``secaggplus_mod`` (see :func:`apps.secure_when_asked`), which hands the
  ClientApp a legacy ``FitIns`` and masks the legacy ``FitRes`` it gets back
  (:func:`apps.make_client_app` answers both forms).

The server cannot check a reply it cannot read, so the checks move:

- each site checks its own update against what it received (names, shapes, dtypes, finite values)
  and against the quantization (``max_weight``, ``clipping_range``), and sends an error instead of
  a wrong update (:func:`update_problems`);
- the server checks the shapes of every masked vector and drops one that differs;
- a site that fails or is dropped after the key exchange is unmasked from its neighbours' shares,
  so the round goes on when at least ``threshold`` of them answered; otherwise it is not aggregated.

Example counts and metrics travel in clear, as in Flower's own SecAgg+ path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .messages import exchange, site_name_of, to_arrays
from .replies import describe, reply_problems
from .strategies import WEIGHT_KEY

#: what a train message's config tells a site about the quantization it will go through
NAMES_KEY, MAX_WEIGHT_KEY, CLIPPING_KEY = (
    "secure-names",
    "secure-max-weight",
    "secure-clipping-range",
)
STAGES = {
    "setup": "setup (keys)",
    "share_keys": "sharing keys",
    "collect_masked_vectors": "masked update",
    "unmask": "unmasking",
}


def update_problems(
    received: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    examples: int,
    *,
    max_weight: float,
    clipping_range: float,
) -> list[str]:
    """Why a site must not send ``state`` (trained from ``received``) into SecAgg+; empty if it may.

    SecAgg+ multiplies the state by ``examples / max_weight``, clips it to ``±clipping_range`` and
    quantizes it: an example count above ``max_weight`` would overflow the sum, a value beyond the
    range would be clipped silently, and a NaN has no integer. None of these can be seen once masked.
    """
    problems = reply_problems(describe(received), state, examples)
    if problems:
        return problems
    if examples > max_weight:
        return [
            f"{examples} training examples, more than federated.secure_aggregation.max_weight "
            f"({max_weight:g}): its weight would overflow the masked sum; raise max_weight on the server"
        ]
    ratio = examples / max_weight
    for name, value in state.items():
        peak = float(np.max(np.abs(value))) * ratio if np.size(value) else 0.0
        if peak > clipping_range:
            problems.append(
                f"{name}: a weighted value reaches {peak:.3g}, beyond "
                f"federated.secure_aggregation.clipping_range ({clipping_range:g}): it would "
                "be clipped; raise clipping_range on the server"
            )
    return problems


def content_bytes(content: Any) -> int:
    """Bytes of a message's records (arrays, metrics and configs: SecAgg+ ships keys, shares and
    masked vectors as config values), counted as Flower's ``count_bytes`` counts them."""
    arrays = sum(record.count_bytes() for record in content.array_records.values())
    metrics = sum(record.count_bytes() for record in content.metric_records.values())
    return (
        arrays + metrics + sum(_config_bytes(record) for record in content.config_records.values())
    )


def _config_bytes(record: Mapping[str, Any]) -> int:
    """``ConfigRecord.count_bytes``, which raises on an empty list (SecAgg+ sends one when no
    neighbour dropped out): keys and str/bytes by length, bools 1, numbers 8."""
    total = 0
    for key, value in record.items():
        for item in value if isinstance(value, list) else [value]:
            total += (
                len(item) if isinstance(item, (str, bytes)) else 1 if isinstance(item, bool) else 8
            )
        total += len(key)
    return total


@dataclass
class SecureOutcome:
    """What one secure round gave: the aggregate (``None`` if the protocol halted), one row per
    site, and each answering site's clear figures (its ``FitRes`` metrics and example count)."""

    state: dict[str, np.ndarray] | None
    sites: dict[int, dict[str, Any]]
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None


class _WatchedGrid:
    """The grid the SecAgg+ workflow talks through: it uses the federation's deadline, counts each
    site's bytes, notes each failure with its stage, and drops a masked vector whose shapes are not
    the state's (the workflow then unmasks that site as one that dropped out)."""

    def __init__(
        self,
        grid: Any,
        sites: dict[int, dict],
        names: dict[int, str],
        shapes: list[tuple],
        timeout: float,
    ):
        self.grid, self.sites, self.names, self.shapes, self.timeout = (
            grid,
            sites,
            names,
            shapes,
            timeout,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list:
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        for message in messages:
            self.sites[message.metadata.dst_node_id]["received_bytes"] += content_bytes(
                message.content
            )
        asked = {m.metadata.dst_node_id for m in messages}
        kept = []
        for reply in exchange(self.grid, messages, self.timeout):
            node = reply.answering_node
            asked.discard(node)
            row = self.sites[node]
            row["site"] = site_name_of(reply, self.names)
            if reply.has_error():
                self._fail(
                    row, "failed", f"{STAGES.get(stage, stage)}: {reply.error.reason}", stage
                )
                continue
            row["sent_bytes"] += content_bytes(reply.content)
            if stage == "collect_masked_vectors":
                try:
                    masked = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                    got = [tuple(bytes_to_ndarray(b).shape) for b in masked]
                except Exception as exc:  # whatever a broken reply holds, it is left out, named
                    self._fail(
                        row,
                        "dropped",
                        f"masked update unreadable: {type(exc).__name__}: {exc}",
                        stage,
                    )
                    continue
                if got != self.shapes:
                    self._fail(
                        row,
                        "dropped",
                        stage=stage,
                        problem=f"masked update of {len(got) - 1} array(s) shaped "
                        f"{got[1:4]}{' ...' if len(got) > 4 else ''}, expected {len(self.shapes) - 1} "
                        f"shaped {self.shapes[1:4]}{' ...' if len(self.shapes) > 4 else ''}",
                    )
                    continue
                row["masked"] = True
            kept.append(reply)
        for node in asked:
            self._fail(
                self.sites[node],
                "no reply",
                f"{STAGES.get(stage, stage)}: no reply within "
                f"{self.timeout:g} s (federated.round_timeout)",
                stage,
            )
        return kept

    @staticmethod
    def _fail(row: dict, status: str, problem: str, stage: str) -> None:
        # a site that fails while unmasking has its update in the sum all the same (its
        # neighbours' shares remove its masks): the problem is noted, the status stays
        if row["status"] == "pending" and not (stage == "unmask" and row.get("masked")):
            row["status"] = status
        row["problems"].append(problem)


def secure_round(
    grid: Any,
    settings: Any,
    rnd: int,
    state: Mapping[str, np.ndarray],
    nodes: list[int],
    config: Mapping[str, Any],
    names: dict[int, str],
) -> SecureOutcome:
    """Run SecAgg+ for round ``rnd`` on ``nodes``: each trains from ``state`` with ``config`` and
    the server gets the example-weighted average of their states, and nothing of one site's."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import Code, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    secure = settings.secure_aggregation
    order = list(state)
    parameters = ndarrays_to_parameters([np.ascontiguousarray(state[k]) for k in order])
    fit_config = dict(config) | {
        NAMES_KEY: json.dumps(order),
        MAX_WEIGHT_KEY: float(secure.max_weight),
        CLIPPING_KEY: float(secure.clipping_range),
    }
    sites = {
        n: {
            "node": n,
            "site": names.get(n, f"node {n}"),
            "received_bytes": 0,
            "sent_bytes": 0,
            "status": "pending",
            "problems": [],
        }
        for n in nodes
    }
    watched = _WatchedGrid(
        grid,
        sites,
        names,
        [(1,)] + [tuple(np.shape(state[k])) for k in order],
        settings.round_timeout,
    )

    class OneRound(Strategy):
        """The legacy strategy the workflow drives: it sends ``nodes`` the state and keeps what the
        workflow hands back (every result carries the unmasked average as its parameters)."""

        results: list = []

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters_, client_manager):
            return [(GridClientProxy(n, watched, 0), FitIns(parameters, fit_config)) for n in nodes]

        def aggregate_fit(self, server_round, results, failures):
            self.results = list(results)
            return (self.results[0][1].parameters, {}) if self.results else (None, {})

        def configure_evaluate(self, server_round, parameters_, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters_):
            return None

    strategy = OneRound()
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: rnd}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = to_arrays(state)
    workflow = SecAggPlusWorkflow(
        secure.shares,
        secure.threshold,
        max_weight=secure.max_weight,
        clipping_range=secure.clipping_range,
        quantization_range=secure.quantization_range,
        modulus_range=secure.modulus_range,
        timeout=settings.round_timeout,
    )
    workflow(watched, context)

    outcome = SecureOutcome(state=None, sites=sites)
    for proxy, fitres in strategy.results:
        if fitres.status.code == Code.OK:
            outcome.metrics[proxy.node_id] = dict(fitres.metrics) | {
                WEIGHT_KEY: fitres.num_examples
            }
    if strategy.results:
        averaged = parameters_to_ndarrays(strategy.results[0][1].parameters)
        outcome.state = {
            k: np.asarray(v).astype(np.asarray(state[k]).dtype) for k, v in zip(order, averaged)
        }
    else:
        masked = sum(bool(row.get("masked")) for row in sites.values())
        outcome.reason = (
            f"secure aggregation halted: {masked} of {len(nodes)} site(s) sent a masked "
            "update, and the sum can be unmasked only when every site has enough "
            f"neighbours that answered (shares {secure.shares}, threshold {secure.threshold})"
        )
    for row in sites.values():
        if row["status"] == "pending":
            if row.get("masked"):
                row["status"] = "ok"
            else:
                row["status"] = "not reached"
                row["problems"].append("the protocol halted before this site trained")
        row.pop("masked", None)
    return outcome
