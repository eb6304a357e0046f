"""Reply checks: every problem a site's reply can have is found and named."""

import numpy as np

from tunewright.plugins.federated.replies import describe, reply_problems

SENT = {
    "a.lora_A.weight": np.zeros((8, 4), np.float32),
    "a.lora_B.weight": np.zeros((6, 8), np.float32),
}


def test_a_good_reply_has_no_problem():
    assert reply_problems(describe(SENT), {k: v + 1 for k, v in SENT.items()}, 10) == []


def test_each_problem_is_named():
    expected = describe(SENT)
    assert "missing 1 array(s): a.lora_B.weight" in reply_problems(
        expected, {"a.lora_A.weight": SENT["a.lora_A.weight"]}, 3
    )
    extra = {**SENT, "other": np.zeros(2, np.float32)}
    assert reply_problems(expected, extra, 3) == ["unexpected array(s): other"]
    rank1 = {**SENT, "a.lora_A.weight": np.zeros((1, 4), np.float32)}  # numpy would broadcast it
    assert reply_problems(expected, rank1, 3) == ["a.lora_A.weight: shape (1, 4), expected (8, 4)"]
    wide = {**SENT, "a.lora_B.weight": np.zeros((6, 8), np.float64)}
    assert reply_problems(expected, wide, 3) == ["a.lora_B.weight: dtype float64, expected float32"]
    nan = {**SENT, "a.lora_B.weight": np.full((6, 8), np.nan, np.float32)}
    assert reply_problems(expected, nan, 3) == [
        "a.lora_B.weight: 48 non-finite value(s) (NaN or inf)"
    ]
    assert reply_problems(expected, SENT, 0) == ["num-examples is 0, expected a positive number"]
    assert reply_problems(expected, SENT, float("nan"))
