"""tunewright: a plugin-based fine-tuning engine.

Plugin authors need ``from tunewright import hookimpl`` and, when they implement one, the
protocols, records and errors below; a runner (a federated one...) is written from
:class:`Run`, :func:`prepare_run`, :func:`train` and :func:`evaluate`. Nothing here imports torch
until it trains, so a device with ``tunewright[runtime]`` alone imports this package.
"""

from typing import TYPE_CHECKING, Any

from . import kinds
from .compat import PluginDeprecationWarning
from .config import JobConfig, Section, apply_overrides, load_config, read_yaml, set_key
from .errors import ConfigError, DataError, JobFailed, PluginError, TunewrightError, UsageError
from .grading import build_grader, open_sampler
from .hookspecs import hookimpl
from .manager import PluginManager, get_plugin_manager
from .metrics import better_by, metric_direction, primary_metric
from .models import atomic_directory, cache_dir
from .run import RUN_MARKER, Run, evaluate, prepare_run, run_job
from .runs import LoadedRun, load_run
from .types import (
    DatasetFormat,
    DatasetFormatOptions,
    Grader,
    GraderType,
    Method,
    MethodOptions,
    ModelProvider,
    Problem,
    Runner,
    RunnerOptions,
    SectionOptions,
    Task,
    TaskOptions,
    Tracker,
    TrackerFactory,
    TrackerFactoryOptions,
    TrainResult,
)

if TYPE_CHECKING:
    from .training import train

__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # `train` needs torch: imported when first asked for, not with the package
    if name == "train":
        from .training import train

        return train
    raise AttributeError(f"module 'tunewright' has no attribute {name!r}")


__all__ = [
    # plugins
    "hookimpl",
    "get_plugin_manager",
    "PluginManager",
    # config
    "JobConfig",
    "Section",
    "load_config",
    "read_yaml",
    "apply_overrides",
    "set_key",
    # what plugins implement
    "ModelProvider",
    "DatasetFormat",
    "Task",
    "Method",
    "Tracker",
    "TrackerFactory",
    "Runner",
    "Grader",
    "GraderType",
    "kinds",
    "Problem",
    # their optional members
    "DatasetFormatOptions",
    "TaskOptions",
    "MethodOptions",
    "TrackerFactoryOptions",
    "RunnerOptions",
    "SectionOptions",
    # a job
    "Run",
    "prepare_run",
    "train",
    "evaluate",
    "run_job",
    "open_sampler",
    "build_grader",
    "TrainResult",
    "RUN_MARKER",
    # a finished run
    "load_run",
    "LoadedRun",
    # which metric judges a run, which way is better (the summary, early stopping, the parity gate)
    "primary_metric",
    "metric_direction",
    "better_by",
    # files
    "cache_dir",
    "atomic_directory",
    # errors
    "TunewrightError",
    "UsageError",
    "ConfigError",
    "DataError",
    "PluginError",
    "JobFailed",
    "PluginDeprecationWarning",
]
