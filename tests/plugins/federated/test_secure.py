"""What a site checks before its update goes into SecAgg+ (the server cannot check it once it is
masked), and the settings that cannot work with secure aggregation."""

import numpy as np
import pytest
from pydantic import ValidationError

from tunewright.plugins.federated.secure import update_problems
from tunewright.plugins.federated.settings import FederatedSettings

RECEIVED = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}


def trained(**changes):
    state = {"a": np.full((2, 3), 0.5, np.float32), "b": np.full(4, -0.25, np.float32)}
    return state | changes


def problems(state, examples=100, max_weight=1000.0, clipping_range=1.0):
    return update_problems(
        RECEIVED, state, examples, max_weight=max_weight, clipping_range=clipping_range
    )


def test_a_good_update_may_be_sent():
    assert problems(trained()) == []
    # the bound applies to weighted values: 0.5 x 1000 / 1000 is within a range of 0.5
    assert problems(trained(), examples=1000, clipping_range=0.5) == []


def test_what_the_masked_sum_would_hide_is_refused_by_the_site():
    assert problems(trained(b=np.array([0, np.nan, 0, 0], np.float32))) == [
        "b: 1 non-finite value(s) (NaN or inf)"
    ]
    assert problems(trained(a=np.zeros((1, 3), np.float32))) == ["a: shape (1, 3), expected (2, 3)"]
    assert problems(trained(b=np.zeros(4, np.float64))) == ["b: dtype float64, expected float32"]
    assert problems({"a": trained()["a"]}) == ["missing 1 array(s): b"]
    # more examples than max_weight would overflow the sum of weights
    assert problems(trained(), examples=1500) == [
        "1500 training examples, more than federated.secure_aggregation.max_weight (1000): its weight "
        "would overflow the masked sum; raise max_weight on the server"
    ]
    # a value that the quantization would clip: 40 x 100 / 1000 = 4 > 1
    (problem,) = problems(trained(b=np.array([0, 40, 0, 0], np.float32)))
    assert problem.startswith(
        "b: a weighted value reaches 4, beyond federated.secure_aggregation.clipping_range (1)"
    )


@pytest.mark.parametrize(
    "federated, message",
    [
        ({"aggregation": "product"}, "aggregation: product needs each site's B·A"),
        ({"privacy": {}}, "secure_aggregation with privacy is not supported yet"),
        ({"min_sites": 1}, "needs min_sites of 2 or more"),
        (
            {"transfer_dtype": "float16"},
            "transfer_dtype: float16 with secure_aggregation: SecAgg+ quantizes",
        ),
        ({"secure_aggregation": {"shares": 2}}, "shares: 2 as a count must be 3 or more"),
        (
            {"secure_aggregation": {"shares": 5, "threshold": 5}},
            "threshold (5) must be fewer than shares (5)",
        ),
        (
            {"secure_aggregation": {"threshold": 1.5}},
            "threshold: 1.5 as a fraction must be in (0, 1]",
        ),
        ({"secure_aggregation": {"modulus_range": 3 * 2**30}}, "must be a power of 2"),
    ],
)
def test_settings_that_cannot_work_are_refused(federated, message):
    raw = {"secure_aggregation": {}} | federated
    with pytest.raises(ValidationError) as caught:
        FederatedSettings(**raw)
    assert message in str(caught.value)


def test_float16_transfer_with_client_side_clipping_is_refused():
    with pytest.raises(
        ValidationError, match="transfer_dtype: float16 with privacy.clipping: client"
    ):
        FederatedSettings(transfer_dtype="float16", privacy={"clipping": "client"})
    FederatedSettings(transfer_dtype="float16", privacy={"clipping": "server"})


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedavgm"])
@pytest.mark.parametrize("aggregation", ["fedavg", "ffa", "product"])
def test_secure_aggregation_takes_every_aggregation_that_sums(aggregation, strategy):
    """The server sees only the sum of the sites' states: every aggregation that averages states
    works under SecAgg+, with every server strategy; product (an average of each site's B·A) is
    refused. Counts stay counts: shares: 3 means three sites, not a fraction of them."""
    raw = {
        "aggregation": aggregation,
        "strategy": strategy,
        "secure_aggregation": {"shares": 3, "threshold": 2},
    }
    if aggregation == "product":
        with pytest.raises(ValidationError, match="aggregation: product needs each site's B·A"):
            FederatedSettings(**raw)
        return
    secure = FederatedSettings(**raw).secure_aggregation
    assert (type(secure.shares), type(secure.threshold)) == (int, int)
    assert (
        type(FederatedSettings(secure_aggregation={}).secure_aggregation.shares) is float
    )  # 1.0: all of them


def test_a_site_heavier_than_max_weight_is_refused_before_it_trains(tmp_path, tiny_bert_dir):
    from federated_jobs import federated_config, sentiment_rows, write_jsonl

    from tunewright import ConfigError, get_plugin_manager
    from tunewright.plugins.federated.configs import site_config
    from tunewright.plugins.federated.site import Site

    data = write_jsonl(tmp_path / "site.jsonl", sentiment_rows(60))
    path = federated_config(
        tmp_path, tiny_bert_dir, data, tmp_path / "run", secure_aggregation={"max_weight": 40}
    )
    pm = get_plugin_manager()
    site = Site(
        site_config(str(path), str(data), str(tmp_path / "site"), pm),
        pm,
        tmp_path / "site",
        "hospital-a",
    )
    # 60 rows, a fifth held out: 48 to train on, more than 40
    with pytest.raises(
        ConfigError,
        match=r"site hospital-a: 48 training examples, more than "
        r"federated.secure_aggregation.max_weight \(40\)",
    ):
        site.prepare()
    assert site.run is None
