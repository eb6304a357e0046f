"""The server's rounds on Flower's real simulation engine (Ray workers, real messages) with
plain-numpy sites: bad replies are dropped and named, crashes and refusals leave the round going,
too few sites is a bounded error, and Flower's DP wrapper skips a round with a failed site."""

import time

import numpy as np
import pytest

from tunewright import JobFailed
from tunewright.plugins.federated.settings import FederatedSettings

from toy_sites import FINGERPRINT, INITIAL, ToySites

pytestmark = pytest.mark.slow


def simulate(behaviours, settings, central=None):
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from tunewright.plugins.federated.apps import make_client_app
    from tunewright.plugins.federated.federation import Federation

    out = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        federation = Federation(grid, settings, INITIAL, FINGERPRINT, dp_sites=len(behaviours),
                                central_eval=central, echo=lambda m: None)
        out["state"], out["records"] = federation.run()

    run_simulation(server_app=server_app, client_app=make_client_app(ToySites(behaviours)),
                   num_supernodes=len(behaviours),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False}})
    return out


def by_site(record):
    return {row["site"]: row for row in record["sites"]}


def test_bad_replies_are_dropped_and_named_and_the_rounds_go_on(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    settings = FederatedSettings(rounds=2, min_sites=2, sites=6, round_timeout=60, wait_for_sites=60)
    out = simulate(["ok", "ok", "nan", "rank-1", "crash", "other-rank"], settings,
                   central=lambda state: {"bias_mean": float(state["bias"].mean())})
    first, second = out["records"]
    rows = by_site(first)
    assert rows["site-0"]["status"] == rows["site-1"]["status"] == "ok"
    assert rows["site-2"]["status"] == "dropped" and "bias: 1 non-finite value(s)" in rows["site-2"]["problems"][0]
    assert rows["site-3"]["status"] == "dropped"
    assert rows["site-3"]["problems"] == ["layer.lora_A.weight: shape (1, 3), expected (2, 3)"]
    assert rows["site-4"]["status"] == "failed" and "site-4 crashed" in rows["site-4"]["problems"][0]
    assert rows["site-5"]["status"] == "refused" and "lora.r: 4 here, 2 on the server" in rows["site-5"]["problems"][0]
    # only the two good sites were averaged, weighted by examples (10 and 20): targets 1 and 2
    assert first["aggregated"]
    round1 = (10 * 0.5 * 1 + 20 * 0.5 * 2) / 30
    assert out["state"]["bias"][0] == pytest.approx(round1 + ((10 * (0.5 * (1 - round1)) + 20 * (0.5 * (2 - round1))) / 30), rel=1e-5)
    # every site that answered records what it received and sent; the refused one gets nothing more
    from tunewright.plugins.federated.federation import to_arrays

    # Flower's own count: the array bytes plus a small header per array
    assert rows["site-0"]["received_bytes"] == to_arrays(INITIAL).count_bytes()
    assert 0 < rows["site-0"]["received_bytes"] - sum(v.nbytes for v in INITIAL.values()) < 400
    assert rows["site-0"]["sent_bytes"] == rows["site-0"]["received_bytes"]
    assert "site-5" not in by_site(second)
    assert first["central"]["bias_mean"] == pytest.approx(round1, rel=1e-5)
    assert {r["site"]: r["status"] for r in first["evaluate_sites"]}["site-4"] == "failed"


def test_too_few_sites_is_a_bounded_error(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    settings = FederatedSettings(rounds=1, min_sites=2, sites=2, wait_for_sites=3)
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"1 of the 2 sites needed had connected after 3 s"):
        simulate(["ok"], settings)
    assert time.monotonic() - started < 60


def test_dp_wrapper_skips_a_round_with_a_failed_site(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    settings = FederatedSettings(rounds=1, min_sites=2, sites=3,
                                 privacy={"noise_multiplier": 0.5, "clipping_norm": 1.0})
    out = simulate(["ok", "ok", "crash"], settings)
    record = out["records"][0]
    assert not record["aggregated"] and "DP wrapper skipped" in record["skipped_reason"]
    np.testing.assert_array_equal(out["state"]["bias"], INITIAL["bias"])   # the state stays as it was
    assert record["privacy"]["noise_stdev"] == 0.0

    out = simulate(["ok", "ok", "ok"], settings)
    record = out["records"][0]
    assert record["aggregated"] and record["privacy"]["noise_stdev"] == pytest.approx(0.5 * 1.0 / 3)
    # clipped to norm 1 around the start, then noised: not the plain average
    assert not np.allclose(out["state"]["bias"], (10 * 0.5 + 20 * 1.0 + 30 * 1.5) / 60)
