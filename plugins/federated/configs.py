"""A site's config: the job's config with the site's own data and working folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright import ConfigError, DataError, JobConfig, load_config, read_yaml


def with_site_data(
    data: dict, train: str, workdir: str, *, validation: Any = None, format: str | None = None
) -> dict:
    """Return a copy of a config mapping that trains on ``train`` and writes under ``workdir``."""
    data = {
        **data,
        "data": dict(data.get("data") or {}),
        "output": str(workdir),
        "runner": "local",
        "trackers": [],
    }
    data["data"]["train"] = str(train)
    data["data"]["test"] = None
    if validation is not None:
        data["data"]["validation"] = validation
    if format is not None:
        data["data"]["format"] = format
    return data


def site_config(config_path: str, data_path: str, workdir: str, pm: Any) -> JobConfig:
    """The config a deployed site trains with: its CONFIG file with ``--data`` as training data
    (its held-out split, ``data.validation``, is the site's own evaluation data)."""
    if not Path(data_path).is_file():
        raise DataError(f"--data {data_path}: file not found")
    raw = read_yaml(config_path)
    if "federated" not in raw:
        raise ConfigError(
            f"{config_path}: no federated: section; a site needs the same federated "
            "settings as the server (at least aggregation)"
        )
    validation = (raw.get("data") or {}).get("validation", 0.1)
    if isinstance(validation, str):  # a file of the server's: a site holds out part of its own data
        validation = 0.1
    return load_config(
        with_site_data(raw, data_path, workdir, validation=validation),
        pm.registries,
        source=config_path,
    )


def federated_config(config_path: str, pm: Any, *, server: bool = False) -> JobConfig:
    """The job's config, run by the ``federated`` runner (``runner:`` is set to it).

    ``server``: a deployed server's, whose ``data:`` is its central held-out set: all of it is
    evaluated (``data.validation`` is the data file itself unless it names a file of its own)
    and none of it trains."""
    raw = read_yaml(config_path)
    raw["runner"] = "federated"
    raw.setdefault("federated", {})
    data = raw.get("data")
    if (
        server
        and isinstance(data, dict)
        and data.get("train")
        and not isinstance(data.get("validation"), str)
    ):
        raw["data"] = {**data, "validation": data["train"], "test": None}
    return load_config(raw, pm.registries, source=config_path)
