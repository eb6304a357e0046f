"""The training step: one explicit loop from a prepared run to trained weights.

::

    for epoch:                                   method.on_epoch(model, epoch)
        for step: gradient_accumulation_steps micro-batches of batch_size examples per process,
                  in length-grouped, seeded order (this rank's share under torchrun)
            for piece of the micro-batch (a long one runs in pieces, see below):
                summed, count = task.loss(model, piece)           (B, T) -> scalar, items summed
                backward(summed / normaliser)
            gradient *= normaliser / count of every item of the step on every process
            [+ extra_loss(model): backward once]
            clip, optimizer step, schedule, zero
            every logging_steps: run.log + a progress line
            every eval_steps:    evaluate, early stopping
            every save_steps:    checkpoint (trainable state, optimizer, schedule, RNG, data position)

The loss of a step is the sum over every trained item (label token, example) of the step divided
by how many there are, as transformers does with ``num_items_in_batch``: not the mean of
per-micro-batch means, which would weigh a token of a short micro-batch more than one of a long
one. So 2 processes x batch b, 1 process x 2 micro-batches of b and 1 process x batch 2b take the
same step. The same holds inside a micro-batch: one with far more padded positions than usual
(``training.max_forward_tokens``) runs forward and backward in pieces, which bounds the peak
memory by a typical batch's rather than by the longest one's, at no cost in what is learnt.

accelerate places the model and the batches, wraps the model for distributed data parallel under
``torchrun``/``accelerate launch`` and scales fp16 gradients on a GPU; everything else is written
out here so that a newcomer can follow it. Checkpoints hold the method's trainable state only and
are written to a staging folder and renamed, so a killed run never leaves one that looks whole;
resuming restores the optimizer, the schedule, the random state and the position in the data, so a
resumed run logs every step exactly once and matches one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checkpoints import CHECKPOINT_PREFIX, STATE_FILE, checkpoint_step, last_checkpoint
from .run import Run, metric_greater_is_better
from .run import evaluate as evaluate_run
from .types import Method, Task, TrainResult, optional

TRAINABLE_FILE = "trainable.safetensors"
#: examples sorted by length together, as a multiple of the batch (transformers uses 50 too)
MEGABATCH = 50


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------


def batch_order(
    features: list[dict],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    length: Callable[[dict], int],
) -> list[list[int]]:
    """The batches of one epoch as lists of example indices, the same for the same seed and epoch.

    Shuffled; with ``group_by_length``, examples are sorted by length inside megabatches of
    ``MEGABATCH`` batches (less padding), the batches are then shuffled (in length order, the
    loss of a step would follow the length of its examples, not what the model has learnt), and
    the longest batch goes first so that a run that runs out of memory does so at once. Examples
    that all have one length are not grouped: their batches follow the shuffled order.
    """
    order = list(range(len(features)))
    rng = random.Random(seed * 1000 + epoch)
    rng.shuffle(order)
    # examples of one length (images at a fixed input size) have no padding to save: plain order
    varied = group_by_length and len({length(f) for f in features}) > 1
    if varied and len(order) > batch_size:
        span = batch_size * MEGABATCH
        chunks = [
            sorted(order[i : i + span], key=lambda j: -length(features[j]))
            for i in range(0, len(order), span)
        ]
        batches = [
            chunk[i : i + batch_size] for chunk in chunks for i in range(0, len(chunk), batch_size)
        ]
        rng.shuffle(batches)
        longest = max(range(len(batches)), key=lambda b: length(features[batches[b][0]]))
        batches[0], batches[longest] = batches[longest], batches[0]
        return batches
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _feature_length(feature: dict) -> int:
    ids = feature.get("input_ids")
    return len(ids) if ids is not None else 1


def feature_length(task: Any) -> Callable[[dict], int]:
    """The length of a tokenized example for grouping and forward budgets: the task's
    ``num_tokens`` where it counts one (a preference pair: its longer side; features without
    ``input_ids`` would otherwise all count 1, and never be grouped or split), else the length
    of ``input_ids``."""
    counter = optional(task, Task, "num_tokens")
    if counter is None:
        return _feature_length

    def length(feature: dict) -> int:
        n = counter(feature)
        return int(n) if n is not None else _feature_length(feature)

    return length


def split_to_budget(
    indices: list[int], length: Callable[[int], int], budget: int | None
) -> list[list[int]]:
    """``indices`` (one micro-batch) in consecutive pieces whose padded size, examples x the
    longest of them, stays within ``budget`` positions; one piece when ``budget`` is ``None``.
    An example longer than the budget is a piece of its own."""
    if not budget:
        return [indices]
    pieces: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        if current and (len(current) + 1) * max(longest, length(i)) > budget:
            pieces.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length(i))
    return [*pieces, current] if current else pieces


def forward_budget(
    setting: int | str | None,
    batches: list[list[int]],
    length: Callable[[int], int],
    scale: float = 2.0,
) -> int | None:
    """``training.max_forward_tokens`` as a number of padded positions: ``auto`` is ``scale``
    times the median micro-batch's (examples x longest); at the default 2 a typical micro-batch
    never splits (a task's ``auto_forward_batches`` may ask for less)."""
    if not isinstance(setting, str):
        return setting  # a number, or None: never split; the config allows no string but "auto"
    sizes = [len(b) * max(length(i) for i in b) for b in batches if b]
    return max(1, int(scale * statistics.median(sizes))) if sizes else None


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Where a run stands: what a checkpoint records beside the weights and the optimizer."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained
    tokens: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    losses: list[float] = field(default_factory=list)  # every optimizer step's loss


def _save_checkpoint(run: Run, progress: _Progress, optimizer, scheduler) -> Path:
    root = run.run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{CHECKPOINT_PREFIX}{progress.step}"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        state = {
            k: v.detach().to("cpu").contiguous()
            for k, v in run.method.trainable_state(run.model).items()
        }
        save_file(state, str(staging / TRAINABLE_FILE))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            staging / "optimizer.pt",
        )
        torch.save(
            {"python": random.getstate(), "torch": torch.get_rng_state()}, staging / "rng.pt"
        )
        (staging / STATE_FILE).write_text(json.dumps(progress.__dict__, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # keep the newest save_total_limit checkpoints, and the best one of early stopping besides
    best = f"{CHECKPOINT_PREFIX}{progress.best_step}" if progress.best_step is not None else None
    done = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)),
        key=checkpoint_step,
    )
    for old in done[: -run.config.training.save_total_limit]:
        if old.name != best:
            shutil.rmtree(old)
    run.pm.hook.on_checkpoint(run=run, step=progress.step, path=str(target))
    return target


def _load_checkpoint(run: Run, path: Path, optimizer, scheduler) -> _Progress:
    run.method.load_trainable_state(run.model, load_file(str(path / TRAINABLE_FILE)))
    saved = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    return _Progress(**json.loads((path / STATE_FILE).read_text()))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _optimizer(run: Run) -> torch.optim.Optimizer:
    chosen = optional(run.method, Method, "optimizer_parameters")
    params = (
        list(chosen(run.model))
        if chosen is not None
        else [p for p in run.model.parameters() if p.requires_grad]
    )
    if not params:
        from .errors import UsageError

        raise UsageError(f"method {run.method_name!r} left nothing to train in this model")
    t = run.config.training
    # no weight decay on biases and norms (vectors), as transformers' Trainer does
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.learning_rate)


def _rows(batch: dict) -> int:
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None else 1


def summed_loss(task: Any, model: Any, batch: dict) -> tuple[torch.Tensor, float]:
    """``(loss summed over the items of the batch, how many)``: the task's ``loss`` where it has
    one; otherwise the model's own loss, a mean over the batch's examples."""
    task_loss = optional(task, Task, "loss")
    if task_loss is not None:
        summed, count = task_loss(model, batch)
        return summed, float(count)
    rows = _rows(batch)
    return model(**batch).loss * rows, float(rows)


@dataclass
class _Piece:
    """A collated part of one process's share of a micro-batch."""

    batch: dict
    weight: float = 1.0  # 0: a stand-in that keeps an idle process in step under torchrun


def train(
    run: Run,
    *,
    max_steps: int | None = None,
    stop_at_step: int | None = None,
    resume_from: str | Path | None = None,
    features: list[dict] | None = None,
    extra_loss: Callable[[Any], torch.Tensor] | None = None,
    save_checkpoints: bool = True,
    evaluate: bool = True,
) -> TrainResult:
    """Train ``run.model`` in place with the config's training settings; return what happened.

    - ``features``: the tokenized examples to train on (default ``run.train_features``);
    - ``max_steps``: optimizer steps, overriding ``training.max_steps`` and ``epochs`` (the
      length of the learning-rate schedule);
    - ``stop_at_step``: stop at that step, with the schedule unchanged, and write a checkpoint
      there: ``train(run, stop_at_step=n)`` then ``train(run, resume_from=result.checkpoint)``
      is one run;
    - ``resume_from``: a checkpoint folder (trainable state, optimizer, schedule, random state
      and position in the data). Left out, the first call on a run started with ``--resume``
      continues from ``run.resume_from`` (unless ``save_checkpoints=False``), so a runner that is
      ``train(run)`` resumes as the built-in ``local`` one does;
    - ``extra_loss(model)``: a scalar added to the task's loss of every step (a proximal term);
    - ``save_checkpoints=False``: write nothing under the run directory (a federated round);
    - ``evaluate=False``: no evaluation (nor early stopping) during training.

    Under ``torchrun`` every process calls this with the same run: each trains on its share of
    every micro-batch, the gradients are averaged, and only the main process evaluates, logs,
    prints and writes checkpoints. ``TrainResult.metrics["train_loss"]`` is the mean loss over
    the steps trained.
    """
    t = run.config.training
    accelerator = run.accelerator
    features = run.train_features if features is None else features
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = t.batch_size * world  # examples in one micro-batch across every process
    batches_per_epoch = max(1, math.ceil(len(features) / per_step))
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / t.gradient_accumulation_steps))
    total = max_steps if max_steps is not None else t.max_steps
    if total is None or total <= 0:
        total = max(1, math.ceil(t.epochs * steps_per_epoch))
    optimizer = _optimizer(run)
    from transformers import get_scheduler

    scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(t.warmup_ratio * total),
        num_training_steps=total,
    )
    progress = _Progress()
    if save_checkpoints and run.is_main_process:
        # a run killed while writing a checkpoint leaves its staging folder: never a checkpoint
        for stale in (run.run_dir / "checkpoints").glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if resume_from is None and save_checkpoints and run.resume_from and not run.resumed:
        resume_from = (
            run.resume_from
        )  # a resumed run continues where it stopped, however it is called
    if resume_from:
        progress = _load_checkpoint(run, Path(resume_from), optimizer, scheduler)
        run.resumed = True
        run.say(f"resuming from {resume_from} (step {progress.step})")
    stop = min(total, stop_at_step) if stop_at_step else total
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    model = accelerator.prepare_model(run.model) if world > 1 else run.model
    model.train()
    watching = evaluate and bool(run.validation_features)
    metric_name, greater = run.primary_metric
    early = t.early_stopping if watching else None
    if early and early.metric:
        metric_name = early.metric
        greater = metric_greater_is_better(
            run.task, run.task_name, metric_name, key="training.early_stopping.metric"
        )
    eval_steps = t.eval_steps or (max(1, t.logging_steps * 4) if early else None)
    save_steps = (
        (eval_steps if early and not t.save_steps else t.save_steps) if save_checkpoints else None
    )
    on_epoch = optional(run.method, Method, "on_epoch")
    feature_tokens = feature_length(run.task)
    length = lambda i: feature_tokens(features[i])
    budget = forward_budget(
        t.max_forward_tokens,
        [
            b[rank::world]
            for b in batch_order(
                features, per_step, run.config.seed, 0, t.group_by_length, feature_tokens
            )
        ],
        length,
        optional(run.task, Task, "auto_forward_batches", 2.0),
    )
    best_state: dict[str, torch.Tensor] | None = None
    started = time.monotonic()
    start_step, start_tokens = progress.step, progress.tokens
    window_loss, window_steps = 0.0, 0
    checkpoint: Path | None = None
    stopped_early = False

    def micro_batches() -> Iterator[tuple[list[_Piece], int]]:
        """Each micro-batch as this process's pieces, with the positions of the whole micro-batch
        (every process's examples): the same number on every process, known without asking."""
        while True:
            if on_epoch is not None:
                on_epoch(run.model, progress.epoch)
            order = batch_order(
                features,
                per_step,
                run.config.seed,
                progress.epoch,
                t.group_by_length,
                feature_tokens,
            )
            for position in range(progress.batch_in_epoch, len(order)):
                progress.batch_in_epoch = position + 1
                share = order[position][rank::world]  # this process's examples
                if share:
                    pieces = [
                        _Piece(run.task.collate([features[i] for i in part], run.tokenizer))
                        for part in split_to_budget(share, length, budget)
                    ]
                else:  # fewer examples than processes: train on a copy, weighed 0
                    pieces = [
                        _Piece(run.task.collate([features[order[position][0]]], run.tokenizer), 0.0)
                    ]
                for piece in pieces:
                    piece.batch = {
                        k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                        for k, v in piece.batch.items()
                    }
                yield pieces, sum(length(i) for i in order[position])
            progress.epoch += 1
            progress.batch_in_epoch = 0

    stream = micro_batches()
    while progress.step < stop and not stopped_early:
        # -- one optimizer step ------------------------------------------------------------------
        step_batches = [next(stream) for _ in range(t.gradient_accumulation_steps)]
        pieces = [piece for batch_pieces, _ in step_batches for piece in batch_pieces]
        positions = sum(
            n for _, n in step_batches
        )  # non-padding positions of the step, every process
        progress.tokens += positions
        # Backward passes see the loss over a normaliser every process knows in advance (the
        # step's positions), so that gradients keep the size of a mean's (fp16 needs that); the
        # exact division, by every item of the step on every process, is applied after.
        normaliser = float(max(positions, 1))
        loss_sum, items = 0.0, 0.0
        for i, piece in enumerate(pieces):
            # DDP averages gradients over the processes in the last backward pass of the step only
            syncing = world == 1 or i == len(pieces) - 1
            with contextlib.nullcontext() if syncing else model.no_sync():
                with accelerator.autocast():
                    summed, count = summed_loss(
                        run.task, model, piece.batch
                    )  # scalar, items it sums
                accelerator.backward(summed * piece.weight / normaliser)
            loss_sum += summed.detach().double().item() * piece.weight
            items += count * piece.weight
        if world > 1:
            totals = torch.tensor([loss_sum, items], dtype=torch.float64, device=accelerator.device)
            loss_sum, items = accelerator.reduce(totals, reduction="sum").tolist()
        # the gradient now is the mean over processes of (summed loss / normaliser): make it
        # (summed loss over every process) / items
        for param in trainable:
            if param.grad is not None:
                param.grad.mul_(normaliser * world / max(items, 1.0))
        step_loss = loss_sum / items if items else 0.0
        if extra_loss is not None:  # a term on the weights themselves (FedProx's), once per step
            extra = extra_loss(run.model)
            accelerator.backward(extra)
            step_loss += extra.detach().float().item()
        if t.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        if not math.isfinite(step_loss):
            from .errors import JobFailed

            raise JobFailed(
                f"the training loss became {step_loss} at step {progress.step} (lower "
                "training.learning_rate, or check the data); nothing more was trained"
            )
        progress.losses.append(step_loss)
        window_loss += step_loss
        window_steps += 1

        # -- logging, evaluation, early stopping, checkpoints ---------------------------------------
        if progress.step % t.logging_steps == 0 or progress.step == stop:
            elapsed = time.monotonic() - started
            rate = (progress.tokens - start_tokens) / elapsed if elapsed > 0 else 0.0
            logs = {
                "loss": window_loss / window_steps,
                "learning_rate": scheduler.get_last_lr()[0],
                "tokens_per_second": rate,
                "epoch": round(progress.epoch + progress.batch_in_epoch / batches_per_epoch, 4),
            }
            run.log(progress.step, logs)
            done = progress.step - start_step
            left = (stop - progress.step) * elapsed / done if done else float("nan")
            # steps of the whole run (the schedule's), also when this call stops early or resumed
            run.say(
                f"step {progress.step}/{total}  loss {logs['loss']:.4f}  lr {logs['learning_rate']:.2e}  "
                f"{rate:.0f} {optional(run.task, Task, 'progress_unit', 'tok')}/s"
                + (f"  {int(left // 60)}:{int(left % 60):02d} left" if math.isfinite(left) else "")
            )
            window_loss, window_steps = 0.0, 0
        if watching and eval_steps and progress.step % eval_steps == 0 and progress.step < stop:
            metrics = evaluate_run(run, step=progress.step, stage="training")
            run.say(
                f"step {progress.step} eval  "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            )
            if early and run.is_main_process:
                value = metrics[metric_name]
                improved = progress.best_metric is None or (
                    value > progress.best_metric + early.threshold
                    if greater
                    else value < progress.best_metric - early.threshold
                )
                if improved:
                    progress.best_metric, progress.best_step = value, progress.step
                    progress.evaluations_without_improvement = 0
                    best_state = {
                        k: v.detach().clone()
                        for k, v in run.method.trainable_state(run.model).items()
                    }
                else:
                    progress.evaluations_without_improvement += 1
                stopped_early = progress.evaluations_without_improvement >= early.patience
            if early and world > 1:
                stopped_early = _broadcast(stopped_early)
        paused = (
            stop < total and progress.step == stop
        )  # stop_at_step: the run goes on later from here
        due = save_steps and (progress.step % save_steps == 0 or progress.step == stop)
        if run.is_main_process and save_checkpoints and (due or paused):
            checkpoint = _save_checkpoint(run, progress, optimizer, scheduler)
        if world > 1:
            accelerator.wait_for_everyone()
    if stopped_early:
        assert early is not None  # only early stopping stops early
        run.say(
            f"early stopping at step {progress.step}: {metric_name} has not improved for "
            f"{early.patience} evaluations (best {progress.best_metric:.4f} at step {progress.best_step})"
        )
        if save_steps and run.is_main_process and checkpoint_step(checkpoint) != progress.step:
            checkpoint = _save_checkpoint(run, progress, optimizer, scheduler)
    if early and best_state is not None:
        run.method.load_trainable_state(run.model, best_state)
        run.say(
            f"reloaded the best state: {metric_name} {progress.best_metric:.4f} at step {progress.best_step}"
        )
    seconds = time.monotonic() - started
    trained = progress.losses[start_step:] if len(progress.losses) > start_step else progress.losses
    return TrainResult(
        run_dir=run.run_dir,
        global_step=progress.step,
        metrics={"train_loss": sum(trained) / len(trained) if trained else float("nan")},
        train_tokens=progress.tokens - start_tokens,
        train_seconds=seconds,
        checkpoint=checkpoint,
    )


def _broadcast(flag: bool) -> bool:
    """The main process's ``flag`` on every process."""
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


__all__ = [
    "train",
    "last_checkpoint",
    "checkpoint_step",
    "batch_order",
    "split_to_budget",
    "forward_budget",
    "summed_loss",
    "CHECKPOINT_PREFIX",
]
