"""The local runner: one job trained by transformers' Trainer.

Trainer brings the schedules, gradient accumulation, length grouping, resumption and (through
accelerate) multi-GPU and multi-node runs. What this module adds:

- checkpoints hold the method's trainable state only, and are written to a staging folder and
  renamed into place, so a killed run never leaves a checkpoint that looks whole;
- evaluation goes through the task's own ``metrics`` so that the baseline, the evaluations during
  training and the final one are the same computation;
- progress lines, trackers and the lifecycle hooks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .types import TrainResult

TRAINABLE_FILE = "trainable.safetensors"


def last_checkpoint(run_dir: Path) -> str | None:
    folder = Path(run_dir) / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def checkpoint_step(path: str | None) -> int:
    return int(Path(path).name.rsplit("-", 1)[1]) if path else 0


class _DatasetList(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]


class JobTrainer(Trainer):
    """Trainer whose checkpoints, evaluation and best-model loading go through the job."""

    def __init__(self, *args, job: Any, **kwargs):
        super().__init__(*args, **kwargs)
        self.job = job

    # -- checkpoints: trainable state only, staged and renamed ---------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.job.method.trainable_state(self.model).items()}
        save_file(state, os.path.join(output_dir, TRAINABLE_FILE))

    def _save_checkpoint(self, model, trial) -> None:
        final_root = self.args.output_dir
        os.makedirs(final_root, exist_ok=True)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = tempfile.mkdtemp(prefix=".staging-", dir=final_root)
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = final_root
        staged, target = Path(staging_root) / name, Path(final_root) / name
        best = self.state.best_model_checkpoint
        if best and best.startswith(staging_root):
            self.state.best_model_checkpoint = str(Path(final_root) / Path(best).name)
            self.state.save_to_json(str(staged / "trainer_state.json"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        shutil.rmtree(staging_root, ignore_errors=True)
        self._rotate_checkpoints(use_mtime=False, output_dir=final_root)
        self.job.pm.hook.on_checkpoint(run=self.job, step=self.state.global_step, path=str(target))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        state = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        self.job.method.load_trainable_state(model or self.model, state)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best and os.path.exists(os.path.join(best, TRAINABLE_FILE)):
            self._load_from_checkpoint(best)

    # -- evaluation through the task -----------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        dataloader = self.get_eval_dataloader(eval_dataset)
        metrics = self.job.task.metrics(self.model, dataloader)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.job.pm.hook.on_evaluate(run=self.job, step=self.state.global_step, metrics=metrics)
        return metrics


class _Progress(TrainerCallback):
    """Progress lines, trackers, lifecycle hooks and the per-epoch call of methods that need one."""

    def __init__(self, job: Any, start_step: int):
        self.job = job
        self.start_step = start_step
        self.started = time.monotonic()
        self.tokens_at_start: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.tokens_at_start = state.num_input_tokens_seen

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        on_epoch = getattr(self.job.method, "on_epoch", None)
        if on_epoch is not None:
            on_epoch(self.job.model, int(state.epoch or 0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        elapsed = time.monotonic() - self.started
        done = state.global_step - self.start_step
        tokens = state.num_input_tokens_seen - (self.tokens_at_start or 0)
        if "loss" in logs:
            logs["tokens_per_second"] = tokens / elapsed if elapsed > 0 else 0.0
        logs["step"] = state.global_step
        logs["epoch"] = round(state.epoch or 0.0, 4)
        for tracker in self.job.trackers:
            tracker.log(state.global_step, logs)
        self.job.pm.hook.on_step_end(run=self.job, step=state.global_step, logs=logs)
        remaining = (state.max_steps - state.global_step) * (elapsed / done) if done else float("nan")
        if "loss" in logs:
            left = f"{int(remaining // 60)}:{int(remaining % 60):02d} left" if math.isfinite(remaining) else ""
            self.job.echo(
                f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"lr {logs.get('learning_rate', 0):.2e}  {logs['tokens_per_second']:.0f} tok/s  {left}")
        elif any(k.startswith("eval_") for k in logs):
            shown = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, float)}
            self.job.echo(f"step {state.global_step} eval  " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def training_arguments(job: Any, has_validation: bool) -> TrainingArguments:
    t = job.config.training
    eval_steps = t.eval_steps
    save_steps = t.save_steps
    early = t.early_stopping is not None and has_validation
    if early and eval_steps is None:
        eval_steps = max(1, t.logging_steps * 4)
    if early:
        save_steps = eval_steps  # the best checkpoint must exist to be reloaded at the end
    metric_name, greater = job.primary_metric
    if early and t.early_stopping.metric:
        metric_name = t.early_stopping.metric
    return TrainingArguments(
        output_dir=str(job.run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if (eval_steps and has_validation) else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model=f"eval_{metric_name}" if early else None,
        greater_is_better=(greater if not t.early_stopping or not t.early_stopping.metric
                           else "loss" not in metric_name) if early else None,
        group_by_length=t.group_by_length,
        seed=job.config.seed,
        data_seed=job.config.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        save_safetensors=True,
        log_level="warning",
        fp16=job.precision == "fp16" and torch.cuda.is_available(),
    )


def train_local(job: Any) -> TrainResult:
    """Train ``job.model`` on ``job.train_features``; resume from the last checkpoint if asked."""
    args = training_arguments(job, has_validation=bool(job.validation_features))
    resume_from = last_checkpoint(job.run_dir) if job.resume else None
    # A run killed while writing a checkpoint leaves its staging folder: never a checkpoint.
    for stale in (job.run_dir / "checkpoints").glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    callbacks: list[TrainerCallback] = [_Progress(job, checkpoint_step(resume_from))]
    t = job.config.training
    if t.early_stopping is not None and job.validation_features:
        callbacks.append(EarlyStoppingCallback(t.early_stopping.patience, t.early_stopping.threshold))
    trainer = JobTrainer(
        model=job.model,
        args=args,
        train_dataset=_DatasetList(job.train_features),
        eval_dataset=_DatasetList(job.validation_features) if job.validation_features else None,
        data_collator=lambda features: job.task.collate(features, job.tokenizer),
        callbacks=callbacks,
        job=job,
    )
    trainer.remove_callback(PrinterCallback)  # progress lines come from _Progress
    if resume_from:
        job.echo(f"resuming from {resume_from}")
    tokens_before = 0
    if resume_from:
        state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
        tokens_before = state.get("num_input_tokens_seen", 0)
    started = time.monotonic()
    with warnings.catch_warnings():
        # transformers 4.57 counts input tokens with torch.tensor(tensor) and warns on every step
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.monotonic() - started
    tokens = trainer.state.num_input_tokens_seen - tokens_before
    return TrainResult(
        run_dir=job.run_dir,
        global_step=trainer.state.global_step,
        metrics=dict(output.metrics),
        train_tokens=int(tokens),
        train_seconds=seconds,
    )

