"""The spec contract: defaults, overrides, and one-line errors naming field and line."""

import json

import pytest

from runner.errors import GpujobError
from runner.spec import load_spec
from tests.conftest import cli


def test_a_short_spec_gets_defaults(write_spec):
    spec = load_spec(write_spec(name="tiny"))
    assert spec.model.name == "mlp"
    assert spec.data.dataset == "digits"
    assert spec.train.precision == "fp32"
    assert spec.backend == "auto"
    assert spec.resources.gpu is None


def test_gpu_is_normalised_from_the_catalog(write_spec):
    spec = load_spec(write_spec(resources={"gpu": "a10g:2"}))
    assert spec.resources.gpu == "A10G:2"
    assert spec.resources.gpu_request.count == 2
    assert load_spec(write_spec(resources={"gpu": "h100"})).resources.gpu == "H100:1"
    assert load_spec(write_spec(resources={"gpu": "cpu"})).resources.gpu is None


def test_set_overrides_any_field_and_is_validated(write_spec):
    path = write_spec(train={"epochs": 5})
    spec = load_spec(path, ["train.epochs=1", "optimizer.lr=0.5", "resources.gpu=T4:4", "model.name=resnet18"])
    assert (spec.train.epochs, spec.optimizer.lr, spec.resources.gpu, spec.model.name) == (1, 0.5, "T4:4", "resnet18")
    with pytest.raises(GpujobError) as err:
        load_spec(path, ["train.epochs=zero"])
    assert err.value.exit_code == 2
    # the bad value came from --set, not from a line of the file: no line number is claimed
    assert err.value.message.startswith(f"{path}: train.epochs:")


@pytest.mark.parametrize(
    "sections, field, line",
    [
        ({"train": {"epochs": 0}}, "train.epochs", 3),
        ({"train": {"epoch": 3}}, "train.epoch", 3),
        ({"optimizer": {"name": "lion"}}, "optimizer.name", 3),
        ({"resources": {"gpu": "Z80:2"}}, "resources.gpu", 3),
        ({"model": {"name": "resnet1000"}}, "model.name", 3),
        ({"data": {"dataset": "imagenet"}}, "data.dataset", 3),
        ({"train": {"precision": "fp8"}}, "train.precision", 3),
    ],
)
def test_errors_name_the_field_and_the_line(write_spec, sections, field, line):
    path = write_spec(**sections)
    with pytest.raises(GpujobError) as err:
        load_spec(path)
    message = err.value.message
    assert err.value.exit_code == 2
    assert f"{path}:{line}: {field}:" in message
    assert "\n" not in message


def test_bad_name_and_bad_yaml(tmp_path, write_spec):
    with pytest.raises(GpujobError, match="name:"):
        load_spec(write_spec(name="has spaces/slash"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntrain:\n  epochs: [1\n")
    with pytest.raises(GpujobError, match=r"broken.yaml:\d+: not valid YAML"):
        load_spec(broken)
    with pytest.raises(GpujobError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_set_needs_key_value_and_a_section_path(write_spec):
    path = write_spec()
    with pytest.raises(GpujobError, match="KEY=VALUE"):
        load_spec(path, ["train.epochs"])
    with pytest.raises(GpujobError, match="--set name.x=1: name is not a section"):
        load_spec(path, ["name.x=1"])


def test_validate_prints_the_resolved_spec(write_spec):
    result = cli("validate", write_spec(name="v"), "--set", "train.epochs=2")
    assert result.exit_code == 0
    assert "epochs: 2" in result.stdout and "log_every_steps: 50" in result.stdout


def test_schema_is_json_schema_with_every_section():
    result = cli("schema")
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) >= {"name", "model", "data", "optimizer", "train", "resources", "backend"}
    assert schema["additionalProperties"] is False


def test_every_shipped_job_validates():
    from pathlib import Path

    jobs = sorted(Path(__file__).parents[1].glob("jobs/*.yaml"))
    assert {p.name for p in jobs} >= {"resnet18.yaml", "fashion_mlp.yaml", "quickstart.yaml"}
    for path in jobs:
        load_spec(path)
    assert load_spec(Path(__file__).parents[1] / "jobs/resnet18.yaml").resources.gpu == "A10G:2"
