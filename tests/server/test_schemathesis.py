"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis) against a
running tiny server: every operation, a few generated cases each, real uploads among them. No
case may get a 5xx, and every response must match the schema (status declared, error shape)."""

from __future__ import annotations

import time

import pytest
from server_helpers import live_server, png_bytes

schemathesis = pytest.importorskip("schemathesis", reason="needs the 'dev' extra (schemathesis)")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from instantstyle.server.service import GenerationService, Limits  # noqa: E402

EXAMPLES = 6  # per operation (and per generation mode)
BUDGET_S = 20.0  # the whole run; a request gets at most REQUEST_TIMEOUT_S
REQUEST_TIMEOUT_S = 10.0
LIMITS = Limits(
    max_upload_bytes=64 * 1024,
    max_pixels=128 * 128,
    max_style_images=2,
    max_num_images=1,
    max_size=64,
    max_steps=30,
    max_wait_s=3,
    max_cost=0.2,
    job_timeout_s=5,
)
_started: list[float] = []


@pytest.fixture(scope="module")
def api_schema(tiny_model, tmp_path_factory):
    from instantstyle.server import create_app

    # uploads: a real PNG the server accepts, or arbitrary bytes it must refuse cleanly
    schemathesis.openapi.format("binary", st.one_of(st.just(png_bytes()), st.binary(max_size=256)))
    styles = tiny_model.styles
    saved, styles.styles_directory = styles.styles_directory, str(tmp_path_factory.mktemp("fuzz-styles"))
    service = GenerationService(tiny_model, queue_size=2, limits=LIMITS, cpu_threads=1)
    try:
        with service, live_server(create_app(service, ui=False)) as url:
            _started.append(time.monotonic())
            yield schemathesis.openapi.from_url(f"{url}/openapi.json")
    finally:
        styles.styles_directory = saved
        from schemathesis.specs.openapi.formats import unregister_string_format

        unregister_string_format("binary")


def test_the_api_holds_to_its_schema(api_schema):
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance
    from schemathesis.transport.serialization import Binary

    checked, statuses = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                if time.monotonic() - _started[0] > BUDGET_S:
                    return  # the time bound: the rest of this run's examples are not sent
                # every check but "schema-valid data gets 2xx": a valid-looking params string that is
                # not a usable request (no style reference, not JSON) is rightly a 400
                response = case.call_and_validate(
                    timeout=REQUEST_TIMEOUT_S, excluded_checks=[positive_data_acceptance]
                )
                statuses.append((case.operation.label, response.status_code))

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
                continue
            checked.append((operation.label, mode))
        if operation.label == "POST /v1/generate":  # and one real generation, with a real upload
            case = operation.Case(
                body={
                    "params": '{"prompt": "a lighthouse", "seed": 1, "steps": 2}',
                    "images": [Binary(png_bytes())],
                },
                media_type="multipart/form-data",
                query={"wait": True},
            )
            response = explicit = case.call_and_validate(
                timeout=REQUEST_TIMEOUT_S, excluded_checks=[positive_data_acceptance]
            )
            statuses.append((operation.label, response.status_code))
    assert len({label for label, _ in checked}) == 10 and len(checked) >= 14, checked  # every operation
    assert time.monotonic() - _started[0] <= BUDGET_S + 2 * REQUEST_TIMEOUT_S
    assert ("POST /v1/generate", 200) in statuses, explicit.text  # the upload was generated from
