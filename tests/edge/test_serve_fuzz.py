"""``edge serve`` fuzzed from its own OpenAPI schema (schemathesis): whatever the generated
requests are, no answer is a 5xx, and each documented answer matches the schema. In process, on the
session's tiny chat and classifier bundles, bounded (a few examples per operation)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

TRIED: list[int] = []


@pytest.fixture(scope="module")
def served_app(generator_bundle, classifier_bundle):
    from tunewright.edge.runtime.serve.cli import build, parser

    args = parser().parse_args(
        [
            f"chat={generator_bundle}",
            f"cls={classifier_bundle}",
            *("--max-tokens-cap", "4", "--default-max-tokens", "4"),
            *("--threads", "1", "--batch-window-ms", "1"),
        ]
    )
    app, _ = build(args, None)
    state = app.state.serve
    state.worker.start()  # what the lifespan does; the test client does not run it
    state.ready = True
    yield app
    state.worker.stop()


@pytest.fixture(scope="module")
def schema(served_app):
    return schemathesis.openapi.from_asgi("/openapi.json", served_app).exclude(
        path_regex="^/(metrics|profile)"
    )


lazy = schemathesis.pytest.from_fixture("schema")


@lazy.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_gets_a_5xx(case):
    response = case.call()
    TRIED.append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])


def test_the_fuzzer_tried_requests_and_none_was_a_5xx():
    """After the fuzzing above: how many requests it tried (``-s`` shows the count)."""
    if not TRIED:
        pytest.skip("the fuzzing test did not run (deselected)")
    print(f"schemathesis tried {len(TRIED)} requests; statuses {sorted(set(TRIED))}")
    assert len(TRIED) >= 50 and max(TRIED) < 500
