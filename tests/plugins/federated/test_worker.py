"""A deployed site's process serves its run on a Unix socket (:mod:`worker`) and says on its
console what it answered: a refusal (its config differs from the server's) as such, and once it
has answered the last round it knows its federation is over (:class:`deploy.SiteProgress`)."""

import numpy as np
import pytest

from tunewright import ConfigError
from tunewright.plugins.federated.deploy import SiteProgress
from tunewright.plugins.federated.worker import RemoteSite, SiteFailed, SiteServer


class Site:
    name, load_seconds = "a", 0.0

    def fit(self, arrays, config):
        if config.get("lora-r") != 4:
            raise ConfigError(
                "site a: its config differs from the server's at lora.r: 4 here, 8 on the server"
            )
        return {k: v + 1 for k, v in arrays.items()}, 10, {"train_loss": 0.5}

    def evaluate(self, arrays, config):
        return 5, {"loss": 0.25}


def serve(progress, lines):
    return SiteServer(
        Site(),
        on_reply=lambda op, config, reply: lines.append(progress.answered("a", op, config, reply)),
    )


def test_a_site_says_it_refused_the_server_and_notes_it():
    progress, lines = SiteProgress(), []
    server = serve(progress, lines)
    try:
        remote = RemoteSite(server.start(), "a")
        with pytest.raises(SiteFailed, match="differs from the server's at lora.r") as found:
            remote.fit(
                {"w": np.zeros(2, np.float32)}, {"server-round": 1, "rounds": 2, "lora-r": 8}
            )
        assert found.value.kind == "ConfigError"  # a refusal stays a refusal at the server
    finally:
        server.close()
    assert lines == [
        "site a: round 1: fit: refused, this site cannot train for this server (it ends): "
        "site a: its config differs from the server's at lora.r: 4 here, 8 on the server"
    ]
    assert progress.refused.startswith("site a: its config differs") and not progress.finished


def test_a_site_knows_its_federation_is_over_once_it_answered_the_last_round():
    progress, lines = SiteProgress(), []
    server = serve(progress, lines)
    try:
        remote = RemoteSite(server.start(), "a")
        state, examples, _ = remote.fit(
            {"w": np.zeros(2, np.float32)}, {"server-round": 2, "rounds": 3, "lora-r": 4}
        )
        assert examples == 10 and (state["w"] == 1).all()
        assert not progress.finished
        assert remote.evaluate(state, {"server-round": 3, "rounds": 3}) == (5, {"loss": 0.25})
    finally:
        server.close()
    assert progress.finished and progress.refused is None
    assert lines[0].startswith("site a: round 2: fit answered in ") and lines[1].startswith(
        "site a: round 3: evaluate"
    )
