"""Flower's server strategies with tunewright's aggregation underneath and Flower's DP wrappers on top.

FedAvg, FedProx, FedAdam and FedAvgM come from ``flwr.serverapp.strategy``. Their averaging step is replaced
by :func:`aggregation.aggregate` (so ``ffa`` and ``product`` work under every strategy): the class
below sits between FedAdam and FedAvg in the method order, so FedAdam's server optimizer runs on
the aggregate this module computes. FedProx only sends ``proximal-mu``; the sites add the term.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
)

from tunewright import ConfigError

from .aggregation import aggregate

WEIGHT_KEY = "num-examples"


class SchemeAveraging(FedAvg):
    """FedAvg whose array averaging is a tunewright aggregation scheme.

    Replies reach it checked (see :mod:`replies`); error replies are left out here too, for a
    strategy used without the round loop. ``last_report`` holds what the scheme reported.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheme = "fedavg"
        self.last_report: dict[str, float] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        usable = [m for m in replies if not m.has_error()]
        if not usable:
            return None, None
        contents = [m.content for m in usable]
        states = [{k: v.numpy() for k, v in c[self.arrayrecord_key].items()} for c in contents]
        metrics = [dict(c["metrics"]) for c in contents]
        weights = [float(m[self.weighted_by_key]) for m in metrics]
        state, self.last_report = aggregate(self.scheme, states, weights)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
        # the example-weighted mean of the figures every site reported (train_loss...)
        shared = set.intersection(*(set(m) for m in metrics)) - {self.weighted_by_key}
        total = sum(weights)
        averaged = {
            k: sum(w * float(m[k]) for w, m in zip(weights, metrics)) / total
            for k in sorted(shared)
            if all(isinstance(m[k], (int, float)) for m in metrics)
        }
        return arrays, MetricRecord(averaged)


class SchemeFedProx(FedProx, SchemeAveraging):
    """FedProx (https://arxiv.org/abs/1812.06127) over a tunewright aggregation scheme."""


class SchemeFedAdam(FedAdam, SchemeAveraging):
    """FedAdam (https://arxiv.org/abs/2003.00295) over a tunewright aggregation scheme: the
    server's Adam step moves the current state towards the scheme's aggregate
    (``Δ = aggregate - current``), per tensor."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = self.current_arrays  # FedOpt keeps the state it sent as numpy arrays
        arrays, metrics = super().aggregate_train(server_round, replies)
        return (arrays if arrays is None else _in_dtypes(arrays, sent)), metrics


def _in_dtypes(arrays: ArrayRecord, sent: Any) -> ArrayRecord:
    """A server step's ``arrays`` in the dtypes the server keeps: float32 for floating-point
    tensors (Flower's steps compute in float64; ``sent`` may be float16 under
    ``transfer_dtype``), the sent dtype otherwise."""

    def dtype(value: Any) -> np.dtype:
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        return np.dtype(np.float32) if value.dtype.kind == "f" else value.dtype

    dtypes = {k: dtype(v) for k, v in (sent or {}).items()}
    return ArrayRecord(
        {
            k: Array(np.ascontiguousarray(v.numpy().astype(dtypes.get(k, v.numpy().dtype))))
            for k, v in arrays.items()
        }
    )


class SchemeFedAvgM(FedAvgM, SchemeAveraging):
    """FedAvgM (https://arxiv.org/abs/1909.06335) over a tunewright aggregation scheme: the server
    steps from the state it sent along ``aggregate - sent``, scaled by ``server_learning_rate``,
    with momentum. Every round's step starts from what the sites received (Flower's FedAvgM keeps
    its own copy after the first round, which is not what travelled under float16 transfer)."""

    def configure_train(self, server_round, arrays, config, grid):
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = self.current_arrays
        arrays, metrics = super().aggregate_train(server_round, replies)
        return (arrays if arrays is None else _in_dtypes(arrays, sent)), metrics


def build_strategy(settings: Any, dp_sites: int) -> tuple[Any, SchemeAveraging]:
    """The strategy a federation runs, and its innermost (aggregating) part.

    ``dp_sites``: the sites each round's DP noise is calibrated for (Flower's ``num_sampled_clients``).
    """
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0 if settings.site_evaluation else 0.0,
        min_train_nodes=settings.min_sites,
        min_evaluate_nodes=settings.min_sites,
        min_available_nodes=settings.min_sites,
        weighted_by_key=WEIGHT_KEY,
    )
    if settings.strategy in ("fedadam", "fedavgm") and settings.aggregation == "product":
        raise ConfigError(
            f"federated.strategy: {settings.strategy} steps every tensor towards the aggregate, "
            "but aggregation: product factors B·A afresh by SVD each round (the factors' basis "
            f"changes, so their difference means nothing); use {settings.strategy} with fedavg or ffa"
        )
    if settings.strategy == "fedprox":
        inner: SchemeAveraging = SchemeFedProx(proximal_mu=settings.proximal_mu, **common)
    elif settings.strategy == "fedadam":
        inner = SchemeFedAdam(
            eta=settings.server_learning_rate or 0.01,
            beta_1=settings.beta_1,
            beta_2=settings.beta_2,
            tau=settings.tau,
            **common,
        )
    elif settings.strategy == "fedavgm":
        inner = SchemeFedAvgM(
            server_learning_rate=settings.server_learning_rate or 1.0,
            server_momentum=settings.server_momentum,
            **common,
        )
    else:
        inner = SchemeAveraging(**common)
    # set afterwards: FedProx and FedAdam pass only the arguments they know to the classes below them
    inner.scheme = settings.aggregation
    privacy = settings.privacy
    if privacy is None:
        return inner, inner
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if privacy.clipping == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(inner, privacy.noise_multiplier, privacy.clipping_norm, dp_sites), inner


def noise_stdev(settings: Any, dp_sites: int) -> float:
    """The standard deviation of the Gaussian noise Flower's fixed-clipping wrappers add to each
    aggregate: ``noise_multiplier * clipping_norm / sampled sites`` (their ``compute_stdv``)."""
    p = settings.privacy
    return float(p.noise_multiplier * p.clipping_norm / dp_sites)
