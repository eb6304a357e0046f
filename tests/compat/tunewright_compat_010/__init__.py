"""A plugin written to tunewright 0.1.0's documented contracts. FROZEN: see README.md.

Only what 0.1.0 exported is imported from tunewright (hookimpl, Section, DataError, TrainResult).
"""

from __future__ import annotations

import json
from pathlib import Path

from tunewright import DataError, Section, TrainResult, hookimpl

# -- a method: train the normalisation weights only ---------------------------------------------


class NormTuneSettings(Section):
    scale: float = 1.0


class NormTune:
    config_class = NormTuneSettings
    reference = "https://example.org/normtune"

    def apply(self, model, settings, task_kind):
        for name, param in model.named_parameters():
            param.requires_grad = "norm" in name
        return model

    def trainable_state(self, model):
        return {n: p.detach() for n, p in model.named_parameters() if "norm" in n}

    def load_trainable_state(self, model, state):
        model.load_state_dict(state, strict=False)

    def save(self, model, path):
        import torch

        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.trainable_state(model), Path(path) / "norms.pt")

    def load(self, model, path, settings, task_kind):
        import torch

        model = self.apply(model, settings, task_kind)
        self.load_trainable_state(model, torch.load(Path(path) / "norms.pt"))
        return model

    def merge(self, model):
        return model


@hookimpl
def register_methods(register):
    register("normtune", NormTune())


# -- a dataset format: prompt<TAB>reply per line ------------------------------------------------


class TsvChat:
    suffixes = (".tsv",)

    def read(self, path):
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                yield number, line

    def to_example(self, record):
        if "\t" not in record:
            raise DataError("expected prompt<TAB>reply")
        prompt, reply = record.split("\t", 1)
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


@hookimpl
def register_dataset_formats(register):
    register("tsvchat", TsvChat())


# -- a tracker: factory(run_dir, config) ---------------------------------------------------------


class LegacyLog:
    def __init__(self, run_dir, config):
        self.handle = (Path(run_dir) / "legacy-log.jsonl").open("a", encoding="utf-8")
        self.handle.write(json.dumps({"made": True, "model": config.model}) + "\n")

    def log(self, step, metrics):
        self.handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self):
        self.handle.close()


@hookimpl
def register_trackers(register):
    register("legacylog", LegacyLog)


# -- a runner: runner(job) -> TrainResult --------------------------------------------------------


def plain_loop(job):
    """A few optimizer steps over the job's training examples, on the job's model."""
    import torch

    steps = job.config.training.max_steps
    size = job.config.training.batch_size
    params = [p for p in job.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.config.training.learning_rate)
    features = job.train_features
    job.model.train()
    losses = []
    for step in range(steps):
        start = (step * size) % max(len(features), 1)
        batch = job.task.collate(features[start:start + size], job.tokenizer)
        loss = job.model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return TrainResult(run_dir=job.run_dir, global_step=steps,
                       metrics={"train_loss": sum(losses) / len(losses)})


@hookimpl
def register_runners(register):
    register("plainloop", plain_loop)


# -- lifecycle hooks, with 0.1.0's arguments -----------------------------------------------------


def _event(run, **fields):
    with (Path(run.run_dir) / "legacy-events.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(fields) + "\n")


@hookimpl
def on_train_begin(run):
    _event(run, hook="on_train_begin", method=run.config.method)


@hookimpl
def on_step_end(run, step, logs):
    _event(run, hook="on_step_end", step=step)


@hookimpl
def on_evaluate(run, step, metrics):
    _event(run, hook="on_evaluate", step=step, loss=metrics["loss"])


@hookimpl
def on_checkpoint(run, step, path):
    _event(run, hook="on_checkpoint", step=step, exists=Path(path).is_dir())


@hookimpl
def on_train_end(run, result):
    _event(run, hook="on_train_end", step=result.global_step)
