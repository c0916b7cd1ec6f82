"""Property-based fuzzing of the OpenAPI schema (schemathesis, in-process ASGI): never a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from chicago_crime.config import load_settings
from chicago_crime.model.predict import make_predictor
from chicago_crime.model.registry import ModelCard
from chicago_crime.serve.app import create_app
from chicago_crime.serve.model_store import LoadedModel, ModelStore, RefreshOutcome
from chicago_crime.serve.schemas import SAMPLE_RECORDS, CrimeRecord

# schemathesis' pytest plugin (``from_fixture``) does not run on pytest 9, so each operation's
# hypothesis strategy is driven directly.
OPERATIONS = (
    "GET /health", "GET /ready", "GET /model", "POST /predict", "POST /predict/batch",
    "POST /model/reload", "GET /metrics",
)


class StaticStore(ModelStore):
    """A store holding one in-memory model; the registry is never contacted."""

    def refresh(self, *, force: bool = False) -> RefreshOutcome:
        self.registry_reachable = True
        return RefreshOutcome(False, "static model")


@pytest.fixture(scope="module")
def api_schema(shared_data: Path):
    from test_serve import fit_toy_model, portal_records

    model = fit_toy_model(portal_records(shared_data, "2018-01", 2000), c=1.0)
    checks = [CrimeRecord.model_validate(r).model_input() for r in SAMPLE_RECORDS]
    server_settings = load_settings(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        mlflow_tracking_uri="http://127.0.0.1:9", model_poll_seconds=0, api_key="fuzz-key",
        max_batch_records=20, api_allowed_hosts="testserver", model_cache_dir="",
    )
    store = StaticStore(server_settings)
    store._current = LoadedModel(
        card=ModelCard(name="toy", version="1", run_id="r1", threshold=0.3,
                       metrics={"roc_auc": 0.8}),
        source="memory", model=model, predictor=make_predictor(model, checks), version_tags={},
    )
    app = create_app(server_settings, store=store)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in ("POST /predict", "POST /predict/batch")
]  # the other operations have no input that can be made invalid


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_no_input_produces_a_server_error(api_schema, label: str, mode: GenerationMode) -> None:
    operations = {op.label: op for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(operations) == set(OPERATIONS)  # a new endpoint must be added here
    operation = operations[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case) -> None:
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    statuses: list[int] = []
    check()
    if label.startswith("POST /predict") and mode is GenerationMode.POSITIVE:
        assert 200 in statuses  # valid generated records reached the model
