"""One site: its own data and model, prepared through the public engine API, trained and evaluated
on the state the server sends.

A site is a :func:`tunewright.prepare_run` on the site's data (its held-out split is the site's own
validation data), so the site trains exactly as a local run would, with
``train(run, max_steps=local_steps, save_checkpoints=False)`` per round. Only the trainable state
(:meth:`Method.trainable_state`: adapter and head) travels; under ``ffa`` the LoRA ``A`` factors are
drawn from the config's seed at every site and on the server, frozen, and never sent.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunewright import ConfigError, JobConfig

from .aggregation import is_lora_a


def fingerprint(config: JobConfig, labels: list[str] | None) -> dict[str, Any]:
    """What the server and every site must agree on, key by key: the base model, task, method and
    its settings, the labels (the head's shape), the aggregation and, for ``ffa``, the seed."""
    settings = config.section("federated")
    method_settings = config.section(config.method)
    out: dict[str, Any] = {
        "model": config.model,
        "task": config.task,
        "method": config.method,
        "labels": labels,
        "federated.aggregation": settings.aggregation if settings else "fedavg",
    }
    if method_settings is not None:
        for key, value in method_settings.model_dump(mode="json").items():
            out[f"{config.method}.{key}"] = value
    if settings is not None and settings.aggregation == "ffa":
        out["seed"] = config.seed
    return out


def check_fingerprint(mine: dict[str, Any], server: dict[str, Any], site: str) -> None:
    """Refuse to train for a server whose config differs from this site's, naming the first key
    in :func:`fingerprint`'s order: a different base model or method is named as such, not as
    the settings that follow from it."""
    for key in [*mine, *(key for key in server if key not in mine)]:
        if mine.get(key) != server.get(key):
            raise ConfigError(
                f"site {site}: its config differs from the server's at {key}: "
                f"{json.dumps(mine.get(key))} here, {json.dumps(server.get(key))} on the server; "
                "every site must train the same base model, method and settings"
            )


def freeze_lora_a(model: Any, seed: int) -> int:
    """FFA-LoRA: draw every LoRA ``A`` from ``seed`` (the same on every site and the server, as
    PEFT's own Kaiming-uniform init) and freeze it. Returns how many factors were frozen."""
    import torch

    frozen = 0
    for name, param in model.named_parameters():
        if not is_lora_a(name):
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        bound = 1.0 / np.sqrt(param.shape[1])  # A: (r, in)
        with torch.no_grad():
            param.copy_(
                torch.empty(param.shape)
                .uniform_(-bound, bound, generator=generator)
                .to(param.dtype)
            )
        param.requires_grad_(False)
        frozen += 1
    if not frozen:
        raise ConfigError(
            "federated.aggregation: ffa freezes LoRA's A factors, but the method "
            "applied none (use method: lora)"
        )
    return frozen


def travelling_state(method: Any, model: Any, aggregation: str) -> dict[str, np.ndarray]:
    """The trainable state as named numpy arrays, without the frozen ``A`` factors under ``ffa``."""
    import torch

    out = {}
    for name, tensor in method.trainable_state(model).items():
        if aggregation == "ffa" and is_lora_a(name):
            continue
        value = tensor.detach().cpu()
        out[name] = (
            value.float() if value.dtype == torch.bfloat16 else value
        ).numpy()  # numpy has no bf16
    return out


def load_state(method: Any, model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Put received arrays into the model (the rest of its trainable state stays as it is)."""
    import torch

    full = method.trainable_state(model)
    unknown = sorted(set(arrays) - set(full))
    if unknown:
        raise ConfigError(
            f"the server sent arrays this model has no place for: {', '.join(unknown[:3])}"
        )
    for name, value in arrays.items():
        full[name] = torch.from_numpy(np.array(value)).to(full[name].dtype)
    method.load_trainable_state(model, full)


class Site:
    """A site's prepared run. ``fit`` and ``evaluate`` take the server's arrays and return replies.

    The run is prepared on first use (or by :meth:`prepare`) and kept: a simulated site lives in a
    Ray worker, a deployed one in its ``tunewright federate site`` process (:mod:`worker`), so
    neither pays for loading the model more than once. The label set (the head's outputs) is the
    server's: a site whose own data yields other labels prepares its run again with the server's.
    """

    def __init__(
        self,
        config: JobConfig,
        pm: Any,
        workdir: str | Path,
        name: str,
        echo: Callable[[str], None] | None = None,
    ):
        self.name = name
        self.config = config
        self.pm = pm
        self.workdir = Path(workdir)
        self.settings = config.section("federated")
        self.echo = echo or (lambda message: None)
        self.run: Any = None
        self.fingerprint: dict[str, Any] | None = None
        self.load_seconds = 0.0

    def prepare(self, labels: list[str] | None = None, *, fixed: bool = False) -> Any:
        """Prepare the site's run (once; again only when ``fixed`` labels differ from its own)."""
        from tunewright import prepare_run

        if self.run is not None and (not fixed or self.run.labels == labels):
            return self.run
        started = time.monotonic()
        if self.run is not None:
            self.echo(f"site {self.name}: preparing again with the server's labels {labels}")
        run = prepare_run(
            self.config,
            self.pm,
            overwrite=True,
            run_dir=self.workdir,
            echo=self.echo,
            labels=labels if fixed else None,
        )
        secure = self.settings.secure_aggregation
        if secure is not None and len(run.train_features) > secure.max_weight:
            # found before any training: in a round, the site would train and then have to refuse to send
            raise ConfigError(
                f"site {self.name}: {len(run.train_features)} training examples, more than "
                f"federated.secure_aggregation.max_weight ({secure.max_weight:g}), the largest weight "
                "SecAgg+ sums without overflow; raise max_weight in the server's and the sites' config"
            )
        self.run = run
        if self.settings.aggregation == "ffa":
            freeze_lora_a(self.run.model, self.config.seed)
        self.fingerprint = fingerprint(self.config, self.run.labels)
        self.load_seconds += time.monotonic() - started
        return self.run

    def _for_server(self, config: dict[str, Any]) -> Any:
        """The run, prepared with the server's labels, after checking the server's fingerprint."""
        server = json.loads(str(config["fingerprint"]))
        # every key but the labels first: a site with a different base model is refused before it loads it
        check_fingerprint(fingerprint(self.config, server.get("labels")), server, self.name)
        return self.prepare(server.get("labels"), fixed=server.get("labels") is not None)

    def fit(
        self, arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        """Train ``local-steps`` steps from the server's state; the new state, examples and figures.

        With ``evaluate-first`` in ``config`` the server's state is first evaluated on the site's
        held-out data (``evaluate/...`` figures): the evaluation of the previous round's aggregate
        rides on this round's message instead of costing a message of its own.
        """
        from tunewright import train

        run = self._for_server(config)
        use_threads(run.config)
        load_state(run.method, run.model, arrays)
        metrics: dict[str, float] = {}
        if config.get("evaluate-first"):
            evaluated_at = time.monotonic()
            examples, figures = self._evaluate(run)
            metrics.update({f"evaluate/{k}": v for k, v in figures.items()})
            metrics["evaluate/num-examples"] = examples
            metrics["evaluate_seconds"] = time.monotonic() - evaluated_at
        round_number = int(config.get("server-round", 1))
        extra_loss = proximal_term(run.model, float(config.get("proximal-mu", 0.0)))
        # a different order each round, or every round would start from the same first batches
        order = np.random.default_rng(
            [run.config.seed, round_number, zlib.crc32(self.name.encode())]
        ).permutation(len(run.train_features))
        started = time.monotonic()
        result = train(
            run,
            max_steps=int(config["local-steps"]),
            features=[run.train_features[i] for i in order],
            extra_loss=extra_loss,
            save_checkpoints=False,
            evaluate=False,
        )
        metrics.update(
            {
                "train_loss": float(result.metrics.get("train_loss", float("nan"))),
                "train_tokens": int(result.train_tokens),
                "train_seconds": time.monotonic() - started,
            }
        )
        return (
            travelling_state(run.method, run.model, self.settings.aggregation),
            len(run.train_features),
            metrics,
        )

    def evaluate(
        self, arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[int, dict[str, float]]:
        """The task's metrics of the server's state on this site's held-out data."""
        run = self._for_server(config)
        use_threads(run.config)
        load_state(run.method, run.model, arrays)
        return self._evaluate(run)

    @staticmethod
    def _evaluate(run: Any) -> tuple[int, dict[str, float]]:
        from tunewright import evaluate

        features = run.validation_features
        if not features:
            return 0, {}
        return len(features), {
            k: float(v) for k, v in evaluate(run, features).items() if isinstance(v, (int, float))
        }


def use_threads(config: JobConfig) -> None:
    """Apply ``training.num_threads`` in the calling thread (a deployed site trains in the thread
    that serves it, and OpenMP keeps its thread count per thread): on a busy machine more torch
    threads than free cores make small models many times slower, not faster."""
    threads = config.training.num_threads
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def proximal_term(model: Any, mu: float) -> Callable[[Any], Any] | None:
    """FedProx's ``mu/2 · ||w - w_global||²`` over the trainable parameters, anchored now."""
    if mu <= 0:
        return None
    anchors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def extra_loss(model: Any) -> Any:
        terms = [((p - anchors[n]) ** 2).sum() for n, p in model.named_parameters() if n in anchors]
        return (mu / 2) * sum(terms)

    return extra_loss
