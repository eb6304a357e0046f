"""The server's rounds on Flower's real simulation engine (Ray workers, real messages) with
plain-numpy sites: bad replies are dropped and named, crashes and refusals leave the round going,
too few sites is a bounded error, a round with fewer usable replies than min_sites is not
aggregated, FedAdam and FedProx run on top of the adapter average, and
Flower's DP wrapper skips a round with a failed site. Each simulation starts Ray once (the slow
part) and runs several federations on its grid."""

import time

import numpy as np
import pytest
from toy_sites import FINGERPRINT, INITIAL, ToySites

from tunewright import JobFailed
from tunewright.plugins.federated.settings import FederatedSettings

pytestmark = pytest.mark.slow


def simulate(behaviours, scenarios):
    """Run each ``scenario(grid)`` in turn in one ServerApp on ``len(behaviours)`` toy sites;
    their results (or the exception each raised), by name."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from tunewright.plugins.federated.apps import make_client_app

    out = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        for name, scenario in scenarios.items():
            started = time.monotonic()
            try:
                out[name] = scenario(grid)
            except Exception as exc:  # asserted on by the test
                out[name] = exc
            out[f"{name}_seconds"] = time.monotonic() - started

    run_simulation(
        server_app=server_app,
        client_app=make_client_app(ToySites(behaviours)),
        num_supernodes=len(behaviours),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
        },
    )
    return out


def federation(settings, central=None, sites=None):
    from tunewright.plugins.federated.federation import Federation

    def scenario(grid):
        fed = Federation(
            grid,
            settings,
            INITIAL,
            FINGERPRINT,
            dp_sites=sites or settings.sites,
            central_eval=central,
            echo=lambda m: None,
        )
        return fed.run()

    return scenario


def by_site(record):
    return {row["site"]: row for row in record["sites"]}


def toy_step(state, target):
    return state + 0.5 * (target - state)


def test_bad_replies_too_few_sites_fedadam_and_fedprox(flower_env):
    common = dict(min_sites=2, sites=6, round_timeout=180, wait_for_sites=120)
    out = simulate(
        ["ok", "ok", "nan", "rank-1", "crash", "other-rank"],
        {
            "fedavg": federation(
                FederatedSettings(rounds=2, **common),
                central=lambda state: {"bias_mean": float(state["bias"].mean())},
            ),
            "too_few": federation(
                FederatedSettings(rounds=1, min_sites=7, sites=7, wait_for_sites=3)
            ),
            "too_few_usable": federation(FederatedSettings(rounds=1, **{**common, "min_sites": 3})),
            "fedadam": federation(
                FederatedSettings(rounds=1, strategy="fedadam", server_learning_rate=0.1, **common)
            ),
            "fedprox": federation(
                FederatedSettings(rounds=1, strategy="fedprox", proximal_mu=0.25, **common)
            ),
            "float16": federation(FederatedSettings(rounds=2, transfer_dtype="float16", **common)),
            "fedavgm": federation(
                FederatedSettings(
                    rounds=2,
                    strategy="fedavgm",
                    server_learning_rate=2.0,
                    server_momentum=0.5,
                    transfer_dtype="float16",
                    **common,
                )
            ),
        },
    )
    state, (first, second) = out["fedavg"]
    rows = by_site(first)
    assert rows["site-0"]["status"] == rows["site-1"]["status"] == "ok"
    assert (
        rows["site-2"]["status"] == "dropped"
        and "bias: 1 non-finite value(s)" in rows["site-2"]["problems"][0]
    )
    assert rows["site-3"]["status"] == "dropped"
    assert rows["site-3"]["problems"] == ["layer.lora_A.weight: shape (1, 3), expected (2, 3)"]
    assert (
        rows["site-4"]["status"] == "failed" and "site-4 crashed" in rows["site-4"]["problems"][0]
    )
    assert (
        rows["site-5"]["status"] == "refused"
        and "lora.r: 4 here, 2 on the server" in rows["site-5"]["problems"][0]
    )
    # only the two good sites were averaged, weighted by examples (10 and 20): targets 1 and 2
    assert first["aggregated"]
    round1 = (10 * toy_step(0, 1) + 20 * toy_step(0, 2)) / 30
    round2 = (10 * toy_step(round1, 1) + 20 * toy_step(round1, 2)) / 30
    assert state["bias"][0] == pytest.approx(round2, rel=1e-5)
    # every site that answered records what it received and sent; the refused one gets nothing more
    from tunewright.plugins.federated.federation import to_arrays

    # Flower's own count: the array bytes plus a small header per array
    assert rows["site-0"]["received_bytes"] == to_arrays(INITIAL).count_bytes()
    assert 0 < rows["site-0"]["received_bytes"] - sum(v.nbytes for v in INITIAL.values()) < 400
    assert rows["site-0"]["sent_bytes"] == rows["site-0"]["received_bytes"]
    assert "site-5" not in by_site(second)
    assert first["central"]["bias_mean"] == pytest.approx(round1, rel=1e-5)
    # the sites' evaluation of round 1's aggregate came with round 2's train replies
    evaluated = {r["site"]: r for r in first["evaluate_sites"]}
    assert evaluated["site-0"]["loss"] == pytest.approx(abs(round1 - 1), rel=1e-5)
    assert evaluated["site-4"]["status"] == "failed" and "site-5" not in evaluated
    # ...and that of the last round's by one evaluate message per site
    assert {r["site"] for r in second["evaluate_sites"]} >= {"site-0", "site-1", "site-2", "site-3"}
    assert second["evaluate"]["loss"] == pytest.approx(
        (5 * abs(round2 - 1) + 5 * abs(round2 - 2) + 5 * abs(round2 - 3) + 5 * abs(round2 - 4))
        / 20,
        rel=1e-4,
    )

    # fewer sites than min_sites: a clear error after wait_for_sites, not a hang
    assert isinstance(out["too_few"], JobFailed)
    assert "6 of the 7 sites needed had connected after 3 s" in str(out["too_few"])
    assert out["too_few_seconds"] < 30

    # min_sites counts the replies that are averaged: six sites answered, two usable, min_sites 3
    state, (record,) = out["too_few_usable"]
    assert not record["aggregated"] and "aggregation" not in record
    assert record["skipped_reason"].startswith(
        "2 usable replies, fewer than federated.min_sites (3)"
    )
    assert {r["site"] for r in record["sites"] if r["status"] == "ok"} == {"site-0", "site-1"}
    assert all((state[k] == INITIAL[k]).all() for k in INITIAL)  # the state stays as it was

    # FedAdam: one server Adam step from the initial state towards the checked average
    state, (record,) = out["fedadam"]
    assert record["aggregated"] and {r["site"] for r in record["sites"] if r["status"] == "ok"} == {
        "site-0",
        "site-1",
    }
    delta = round1 - 0.0
    m, v = 0.1 * delta, 0.01 * delta**2
    eta = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # Flower's bias-corrected rate at round 1
    assert state["bias"][0] == pytest.approx(eta * m / (np.sqrt(v) + 1e-3), rel=1e-4)
    assert state["bias"].dtype == np.float32  # what travels keeps its dtype
    assert abs(state["bias"][0] - round1) > 0.5  # a server step, not the plain average

    # FedProx: the strategy sends its weight to every site (which adds the term to its loss)
    state, (record,) = out["fedprox"]
    assert all(r["proximal_mu"] == 0.25 for r in record["sites"] if r["status"] == "ok")
    assert state["bias"][0] == pytest.approx(round1, rel=1e-5)

    # transfer_dtype float16: half the bytes each way, the same checks, a float32 average of the
    # values that travelled (round 1's average rounded to float16 is what round 2 started from)
    from tunewright.plugins.federated.federation import cast_floats

    state, (first, second) = out["float16"]
    rows = by_site(first)
    assert (
        rows["site-0"]["received_bytes"]
        == to_arrays(cast_floats(INITIAL, np.float16)).count_bytes()
    )
    assert rows["site-0"]["sent_bytes"] == rows["site-0"]["received_bytes"]
    assert rows["site-0"]["received_bytes"] - sum(v.nbytes for v in INITIAL.values()) / 2 < 400
    assert (
        rows["site-2"]["status"] == "dropped"
        and "bias: 1 non-finite value(s)" in rows["site-2"]["problems"][0]
    )
    assert rows["site-3"]["status"] == "dropped" and rows["site-5"]["status"] == "refused"
    sent = float(np.float16(round1))
    assert state["bias"].dtype == np.float32
    assert state["bias"][0] == pytest.approx(
        (10 * toy_step(sent, 1) + 20 * toy_step(sent, 2)) / 30, rel=1e-3
    )

    # FedAvgM (server step 2, momentum 0.5) over float16 transfer: each step starts from what the
    # sites received, and the server keeps float32
    state, (first, second) = out["fedavgm"]
    assert first["aggregated"] and second["aggregated"]
    momentum = 0 - round1  # round 1's pseudo-gradient (sent - average)
    x1 = 0 - 2.0 * momentum
    received = float(np.float16(x1))
    average = (10 * toy_step(received, 1) + 20 * toy_step(received, 2)) / 30
    momentum = 0.5 * momentum + (received - average)
    assert state["bias"].dtype == np.float32
    assert state["bias"][0] == pytest.approx(received - 2.0 * momentum, rel=2e-3)
    assert (
        abs(state["bias"][0] - average) > 0.1
    )  # a server step with momentum, not the plain average


def test_dp_wrapper_skips_a_round_with_a_failed_site(flower_env):
    settings = FederatedSettings(
        rounds=2,
        min_sites=2,
        sites=3,
        round_timeout=60,
        privacy={"noise_multiplier": 0.5, "clipping_norm": 1.0},
    )
    out = simulate(
        ["ok", "ok", "crash-once"],
        {
            "dp": federation(settings),
            "dp16": federation(settings.model_copy(update={"transfer_dtype": "float16"})),
            # round 3: site-2 answers after round_timeout (Flower's wrapper would only warn and average two)
            "late": federation(settings.model_copy(update={"rounds": 3, "round_timeout": 8.0})),
        },
    )
    state, (_, second, third) = out["late"]
    assert second["aggregated"] and not third["aggregated"]
    assert (
        "2 usable replies (a reply was dropped or missing) and DP noise is calibrated for 3 sites"
        in third["skipped_reason"]
    )
    assert (
        by_site(third)["site-2"]["status"] == "no reply" and third["privacy"]["noise_stdev"] == 0.0
    )
    # float16 on the wire: the wrapper clips the float32 replies around the float16 state it sent
    state16, (skipped, noised) = out["dp16"]
    assert not skipped["aggregated"] and noised["aggregated"]
    assert state16["bias"].dtype == np.float32 and np.isfinite(state16["bias"]).all()
    state, (first, second) = out["dp"]
    # the same messages, the arrays' data in half the bytes (Flower's headers are the same)
    assert (
        by_site(second)["site-0"]["received_bytes"] - by_site(noised)["site-0"]["received_bytes"]
        == sum(v.nbytes for v in INITIAL.values()) / 2
    )
    # round 1: site-2 failed, so Flower's wrapper aggregated nothing and the state stayed
    assert not first["aggregated"] and "DP wrapper skipped" in first["skipped_reason"]
    assert first["privacy"]["noise_stdev"] == 0.0
    assert by_site(first)["site-2"]["status"] == "failed"
    # round 2: every site answered; clipped to norm 1 around the start, then noised
    assert second["aggregated"] and second["privacy"]["noise_stdev"] == pytest.approx(0.5 * 1.0 / 3)
    plain = (10 * 0.5 + 20 * 1.0 + 30 * 1.5) / 60
    assert not np.allclose(state["bias"], plain)
    assert (
        np.linalg.norm(np.concatenate([v.ravel() for v in state.values()])) < 1.0 + 6 * 0.5 / 3 * 3
    )


def test_secure_aggregation_averages_what_it_cannot_see(flower_env):
    """SecAgg+ on Flower's legacy path: the server unmasks only the sum, which equals the plain
    weighted average of the sites that trained; a site whose update is bad says so instead of
    sending it, a refusing site is refused, and too few answers halt the round without harm."""
    common = dict(min_sites=2, sites=5, round_timeout=60, wait_for_sites=60)
    out = simulate(
        ["ok", "ok", "ok", "nan", "other-rank"],
        {
            "secure": federation(
                FederatedSettings(rounds=2, secure_aggregation={}, **common),
                central=lambda state: {"bias_mean": float(state["bias"].mean())},
            ),
            "halted": federation(
                FederatedSettings(rounds=1, secure_aggregation={"threshold": 1.0}, **common)
            ),
            "fedadam": federation(
                FederatedSettings(
                    rounds=1,
                    strategy="fedadam",
                    server_learning_rate=0.1,
                    secure_aggregation={},
                    **common,
                )
            ),
        },
    )
    state, (first, second) = out["secure"]
    rows = by_site(first)
    assert {name for name, row in rows.items() if row["status"] == "ok"} == {
        "site-0",
        "site-1",
        "site-2",
    }
    assert rows["site-3"]["status"] == "failed"
    assert "update not sent: bias: 1 non-finite value(s)" in rows["site-3"]["problems"][0]
    assert (
        rows["site-4"]["status"] == "refused"
        and "lora.r: 4 here, 2 on the server" in rows["site-4"]["problems"][0]
    )
    assert "site-4" not in by_site(second)
    # examples travel in clear: 10, 20 and 30; the states only masked, yet their average is exact
    # to the quantization (step 2 / 2**22 on weighted values)
    assert [rows[f"site-{k}"]["num-examples"] for k in range(3)] == [10, 20, 30]
    round1 = sum(w * toy_step(0, t) for w, t in [(10, 1), (20, 2), (30, 3)]) / 60
    round2 = sum(w * toy_step(round1, t) for w, t in [(10, 1), (20, 2), (30, 3)]) / 60
    assert first["aggregated"] and first["central"]["bias_mean"] == pytest.approx(round1, abs=1e-4)
    assert np.allclose(state["bias"], round2, atol=1e-4) and np.allclose(
        state["layer.lora_A.weight"], round2, atol=1e-4
    )
    assert state["bias"].dtype == np.float32
    # the four stages cost more than the state itself, both ways
    from tunewright.plugins.federated.federation import to_arrays

    plain = to_arrays(INITIAL).count_bytes()
    assert rows["site-0"]["received_bytes"] > plain and rows["site-0"]["sent_bytes"] > plain
    # the sites' evaluation of round 1's aggregate rode on round 2's (secure) train replies
    evaluated = {r["site"]: r for r in first["evaluate_sites"]}
    assert evaluated["site-0"]["loss"] == pytest.approx(abs(round1 - 1), abs=1e-4)

    # a threshold of every share: two sites failing leave too few to unmask, the state stays
    state, (record,) = out["halted"]
    assert (
        not record["aggregated"]
        and "secure aggregation halted: 3 of 5 site(s)" in record["skipped_reason"]
    )
    assert np.all(state["bias"] == 0)

    # FedAdam's server step applies to the unmasked average as to a plain one
    state, (record,) = out["fedadam"]
    m, v = 0.1 * round1, 0.01 * round1**2
    eta = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert record["aggregated"]
    assert state["bias"][0] == pytest.approx(eta * m / (np.sqrt(v) + 1e-3), rel=1e-3)
