"""Fixtures of the federated tests; their data and configs are in federated_jobs.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def flower_env(monkeypatch, tmp_path):
    """Flower's telemetry and update check off, its home in a temporary folder."""
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
