"""The request as the Prefect UI form sees it: the deployment's parameter schema (plain functions, no
server). Required inputs, fields in the order a person fills them in, and the cross-field rules
checked by the schema exactly as the model checks them, so the server refuses a bad request before
a run exists."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.request import FinetuneRequest, RenderRequest

INPUTS = dict(reference="s3://renders/uploads/actor.png", driving="s3://renders/uploads/dance.mp4")


def flow_schema(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow.fn).model_dump()


@pytest.fixture(scope="module")
def render_schema() -> dict:
    from flows.render import render

    return flow_schema(render)


def schema_errors(schema: dict, request: dict, **options) -> list[str]:
    """The messages the Prefect server answers for this request (as when a run is created)."""
    from prefect.utilities.schema_tools.validation import validate

    return [error.message for error in validate({"request": request}, schema, **options)]


def model_accepts(request: dict) -> bool:
    try:
        RenderRequest(**request)
    except ValidationError:
        return False
    return True


def test_inputs_are_required_and_fields_ordered_as_filled_in(render_schema):
    from flows.finetune import finetune

    form = render_schema["definitions"]["RenderRequest"]
    assert form["required"] == ["reference", "driving"]
    names = list(RenderRequest.model_fields)
    assert [form["properties"][name]["position"] for name in names] == list(range(len(names)))
    assert names[:7] == ["reference", "driving", "output", "output_format", "audio", "model", "store"]
    assert names.index("steps") < names.index("window") < names.index("gpu_memory_gib")
    assert schema_errors(render_schema, {}) == ["'reference' is a required property", "'driving' is a required property"]
    assert schema_errors(render_schema, dict(INPUTS, reference="")) == ["'' should be non-empty"]
    finetune_form = flow_schema(finetune)["definitions"]["FinetuneRequest"]
    assert finetune_form["required"] == ["clips"]
    assert [p["position"] for p in finetune_form["properties"].values()] == list(range(len(FinetuneRequest.model_fields)))
    with pytest.raises(ValidationError, match="reference"):
        RenderRequest(driving="d.mp4")


def test_a_broken_rule_is_one_error_at_its_field(render_schema):
    from prefect.utilities.schema_tools.validation import build_error_obj, validate

    errors = build_error_obj(validate({"request": dict(INPUTS, window=24, overlap=24)}, render_schema))
    assert errors["errors"] == [{"property": "request", "errors": [
        {"property": "overlap", "errors": ["24 is greater than the maximum of 23"]}]}]
    assert schema_errors(render_schema, dict(INPUTS, overlap=24)) == ["24 is greater than the maximum of 23"]
    assert schema_errors(render_schema, dict(INPUTS, window=4)) == ["4 is less than the minimum of 7"]
    assert schema_errors(render_schema, dict(INPUTS, pose_backend="dwpose")) == ["'dwpose_models' is a required property"]
    assert schema_errors(render_schema, dict(INPUTS, align="none", root_motion="frame")) == ["'body' was expected"]


def test_partial_defaults_count_with_the_model_defaults(render_schema):
    """A deployment's defaults are a partial request (checked without `required`, as Prefect does):
    a field it leaves out counts with the model's default."""
    partial = dict(model="/models/controlnext-svd", store="s3://renders/artifacts", overlap=20, root_motion="frame")
    assert schema_errors(render_schema, partial, ignore_required=True) == []
    assert schema_errors(render_schema, dict(partial, segment_overlap=72), ignore_required=True) == [
        "72 is greater than the maximum of 71"]


PAIRS = st.fixed_dictionaries({}, optional=dict(
    window=st.integers(2, 128), overlap=st.integers(1, 127), segment_length=st.integers(2, 2000),
    segment_overlap=st.integers(0, 240), pose_backend=st.sampled_from(["mediapipe", "dwpose"]),
    dwpose_models=st.sampled_from(["", "models/dwpose"]), align=st.sampled_from(["retarget", "linear", "none"]),
    root_motion=st.sampled_from(["body", "frame", "none"]),
))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(settings_=PAIRS, near=st.booleans())
def test_schema_and_model_agree(render_schema, settings_, near):
    """Every combination the model refuses, the schema refuses too, and no other."""
    if near and "window" in settings_:  # the boundary, where a rule is most likely wrong
        settings_["overlap"] = min(127, max(1, settings_["window"] - 1 + settings_.get("overlap", 0) % 3))
    request = dict(INPUTS, **settings_)
    assert (schema_errors(render_schema, request) == []) == model_accepts(request), request
