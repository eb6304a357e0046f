"""tunewright: a plugin-based fine-tuning engine.

Plugin authors need only ``from tunewright import hookimpl`` (and the protocols and errors below
when they implement one).
"""

from .config import JobConfig, Section
from .errors import ConfigError, DataError, JobFailed, PluginError, TunewrightError, UsageError
from .hookspecs import hookimpl
from .manager import get_plugin_manager
from .types import DatasetFormat, Method, ModelProvider, Problem, Task, TrainResult

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "get_plugin_manager",
    "JobConfig",
    "Section",
    "Problem",
    "ModelProvider",
    "DatasetFormat",
    "Task",
    "Method",
    "TrainResult",
    "TunewrightError",
    "UsageError",
    "ConfigError",
    "DataError",
    "PluginError",
    "JobFailed",
]
