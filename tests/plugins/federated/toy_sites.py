"""Plain-numpy sites for testing the Flower glue with real Flower messages and Ray workers but
without a model: each site pulls a 2x3 weight and a bias towards its own target."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from tunewright.plugins.federated.site import check_fingerprint

FINGERPRINT = {"model": "toy", "method": "lora", "lora.r": 2}
INITIAL = {"layer.lora_A.weight": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}


class ToySite:
    def __init__(self, name: str, behaviour: str):
        self.name = name
        self.behaviour = behaviour
        self.load_seconds = 0.0
        self.target = float(name.rsplit("-", 1)[1]) + 1.0
        self.fingerprint = dict(FINGERPRINT, **({"lora.r": 4} if behaviour == "other-rank" else {}))

    def fit(self, arrays, config):
        check_fingerprint(self.fingerprint, json.loads(str(config["fingerprint"])), self.name)
        if self.behaviour == "crash" or (
            self.behaviour == "crash-once" and config.get("server-round") == 1
        ):
            raise RuntimeError(f"{self.name} crashed while training")
        if (
            self.behaviour == "crash-once" and config.get("server-round") == 3
        ):  # then late, past the deadline
            time.sleep(float(config["round-timeout"]) + 3)
        evaluated = {}
        if config.get("evaluate-first"):  # the state received, evaluated before training
            examples, metrics = self.evaluate(arrays, config)
            evaluated = {f"evaluate/{k}": v for k, v in metrics.items()} | {
                "evaluate/num-examples": examples
            }
        state = {k: (v + 0.5 * (self.target - v)).astype(v.dtype) for k, v in arrays.items()}
        if self.behaviour == "nan":
            state["bias"][1] = np.nan
        if self.behaviour == "rank-1":
            state["layer.lora_A.weight"] = state["layer.lora_A.weight"][:1]
        return (
            state,
            10 * (1 + int(self.name.rsplit("-", 1)[1])),
            {
                "train_loss": float(self.target),
                "pid": float(os.getpid()),
                "proximal_mu": float(config.get("proximal-mu", 0.0)),
                **evaluated,
            },
        )

    def evaluate(self, arrays, config):
        if self.behaviour == "crash":
            raise RuntimeError(f"{self.name} crashed while evaluating")
        return 5, {"loss": float(np.abs(arrays["bias"] - self.target).mean())}


class ToySites:
    """``get_site`` for :func:`make_client_app`: site ``k`` behaves as ``behaviours[k]``."""

    def __init__(self, behaviours: list[str]):
        self.behaviours = behaviours

    def __call__(self, context):
        k = int(context.node_config["partition-id"])
        return ToySite(f"site-{k}", self.behaviours[k])
