"""Errors a user can cause, each mapped to an exit code (DESIGN.md: 1 the job failed, 2 bad usage,
config or data). Their messages say where, what is wrong, and what is allowed."""

from __future__ import annotations


class TunewrightError(Exception):
    """Base of every error tunewright reports to the user without a traceback."""

    exit_code = 1


class UsageError(TunewrightError):
    """Bad usage, config or data: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config key is unknown, missing or of the wrong type."""


class DataError(UsageError):
    """A data file is missing, unreadable or has examples that cannot be trained on."""


class PluginError(UsageError):
    """A plugin failed to import or register, or implements a hook that does not exist."""


class JobFailed(TunewrightError):
    """The job ran and failed (a parity gate, a diverged loss): exit code 1."""
