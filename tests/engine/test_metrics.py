"""engine/metrics.py: the one rule for which metric judges a run and which way is better."""

from __future__ import annotations

import pytest

import tunewright
from tunewright import ConfigError, PluginError, better_by, metric_direction, primary_metric
from tunewright.plugins.tasks import ChatTask, ClassificationTask


def test_the_task_names_the_metric_and_its_direction():
    assert primary_metric(ChatTask(), None) == ("mean_token_accuracy", "max")
    assert primary_metric(ClassificationTask(), ["a", "b"]) == ("accuracy", "max")
    assert primary_metric(ClassificationTask(), None) == ("mse", "min")  # regression


def test_better_by_follows_the_direction():
    assert better_by(0.9, 0.8, "max") == pytest.approx(0.1)
    assert better_by(0.9, 0.8, "min") == pytest.approx(-0.1)


def test_a_metric_a_user_names_that_the_task_lacks_is_a_config_error_at_its_key():
    with pytest.raises(
        ConfigError,
        match=r"training.early_stopping.metric: task 'chat' reports no metric 'acuracy'",
    ):
        metric_direction(
            ChatTask(), "acuracy", task_name="chat", key="training.early_stopping.metric"
        )


def test_a_task_whose_own_metric_has_no_direction_is_the_plugins_error():
    class Odd:
        primary_metric = "score"
        metric_directions = {"loss": "min", "score": "up"}

    with pytest.raises(PluginError, match=r"task 'odd' says metric 'score' goes 'up'"):
        primary_metric(Odd(), None, task_name="odd")
    Odd.metric_directions = {"loss": "min"}
    with pytest.raises(PluginError, match=r"reports no metric 'score'"):
        primary_metric(Odd(), None, task_name="odd")


def test_the_summary_and_the_parity_gate_use_it():
    from tunewright.edge.reference import gate_metric

    assert gate_metric(ClassificationTask(), None) == primary_metric(ClassificationTask(), None)
    assert {"primary_metric", "metric_direction", "better_by"} <= set(tunewright.__all__)
