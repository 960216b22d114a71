"""The spec contract: defaults, overrides, and one-line errors naming field and line."""

import json
import subprocess
import sys

import pytest
import yaml

from runner.errors import GpujobError
from runner.spec.load import load_spec
from tests.conftest import REPO, cli


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
    # the bad value came from --set, not from the file: the option is blamed, not the file
    assert err.value.message.startswith("--set train.epochs=zero: train.epochs:")
    assert str(path) not in err.value.message


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


# ---- what a newcomer trips on: each error says what to write instead ----------------------


@pytest.mark.parametrize(
    "sections, says",
    [
        ({"slurm": {"partiton": "gpu"}}, "slurm.partiton: unknown field; did you mean `slurm.partition`?"),
        ({"modle": {"name": "cnn"}}, "modle: unknown field; did you mean `model`?"),
        ({"data": {"dataset": "synthetic", "synthetic": {"num_class": 3}}},
         "data.synthetic.num_class: unknown field; did you mean `data.synthetic.num_classes`?"),
        ({"train": {"gpu": "A10G"}}, "train.gpu: unknown field; did you mean `resources.gpu`?"),
        ({"kubernetes": {}}, "kubernetes: unknown field; a spec has: name, model, data"),
    ],
)
def test_a_misspelled_field_gets_did_you_mean(write_spec, sections, says):
    path = write_spec(**sections)
    result = cli("validate", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"gpujob: {path}:") and says in result.stderr


def test_set_errors_are_blamed_on_the_option_not_the_file():
    result = cli("validate", "jobs/quickstart.yaml", "--set", "train.epochs=ten")
    assert result.exit_code == 2
    assert result.stderr.startswith("gpujob: --set train.epochs=ten: train.epochs: Input should be a valid integer")
    assert "quickstart.yaml" not in result.stderr
    result = cli("validate", "jobs/quickstart.yaml", "--set", "slurm.partiton=gpu")
    assert result.stderr.startswith("gpujob: --set slurm.partiton=gpu: slurm.partiton: unknown field; did you mean "
                                    "`slurm.partition`?")


@pytest.mark.parametrize("gpu, write", [(4090, "RTX4090"), ("rtx 4090:2", "RTX4090:2"), ("3090", "RTX3090"),
                                        ("Tesla T4", "T4"), ("h100 sxm", "H100")])
def test_a_gpu_by_another_name_says_what_to_write(write_spec, gpu, write):
    result = cli("validate", write_spec(resources={"gpu": gpu}))
    assert result.exit_code == 2
    assert f"resources.gpu: '{gpu}' is not a GPU type; write `{write}`" in result.stderr
    assert "valid string" not in result.stderr


def test_a_value_where_a_section_belongs_says_what_to_write(write_spec):
    result = cli("validate", write_spec(model="cnn"))
    assert result.exit_code == 2 and "model: a section, not a value; write `model: {name: cnn}`" in result.stderr
    assert "ModelSpec" not in result.stderr
    result = cli("validate", write_spec(resources=5))
    assert "resources: a section of fields (gpu, timeout_minutes, processes, nodes, max_usd), not `5`" in result.stderr
    result = cli("validate", write_spec(data=[1, 2]))
    assert "data: a section of fields (dataset, root," in result.stderr and "not `[1, 2]`" in result.stderr
    result = cli("validate", write_spec(), "--set", "model=cnn")
    assert result.stderr.startswith("gpujob: --set model=cnn: model: a section, not a value; write "
                                    "`--set model.name=cnn`")


@pytest.mark.parametrize(
    "data, classes",
    [
        ({"dataset": "digits"}, 10),
        ({"dataset": "fashion_mnist", "download": False}, 10),
        ({"dataset": "synthetic", "synthetic": {"num_classes": 5}}, 5),
        ({"dataset": "tests.plugins:blobs"}, None),  # a factory's count is known once it is loaded
    ],
)
def test_validate_shows_the_class_count_the_model_gets(write_spec, data, classes):
    result = cli("validate", write_spec(data=data))
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["num_classes"] == classes
    assert load_spec(write_spec(model={"num_classes": 3}, data=data)).model.num_classes == 3  # as written wins


def test_validate_stays_fast_without_torch(write_spec):
    code = ("import sys, runner.cli.main; sys.argv=['gpujob','validate',sys.argv[1]]\ntry:\n runner.cli.main.main()\n"
            "except SystemExit as e: assert not e.code, e.code\nassert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code, write_spec(data={"dataset": "cifar10"})], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "num_classes: 10" in out.stdout


def test_good_yaml_still_reads(tmp_path):
    # anchors and merge keys, a BOM, CRLF line ends, and YAML 1.1's dates and base-60 numbers kept as written
    path = tmp_path / "job.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: ok\r\ntrain:\r\n  <<: &base {epochs: 2, seed: 7}\r\n  log_every_steps: 5\r\n"
                     b"model:\r\n  args: {when: 2026-13-45, at: 1:30, again: *base}\r\n")
    spec = load_spec(path)
    assert (spec.name, spec.train.epochs, spec.train.seed, spec.train.log_every_steps) == ("ok", 2, 7, 5)
    assert spec.model.args == {"when": "2026-13-45", "at": "1:30", "again": {"epochs": 2, "seed": 7}}


@pytest.mark.parametrize("gpu, card, capability", [("T4", "T4", "7.5"), ("V100:2", "V100", "7.0")])
def test_bf16_on_a_card_below_ampere_is_refused_when_the_spec_is_read(write_spec, gpu, card, capability):
    """Issue 22: torch says a T4 supports bf16 (emulated), but cuDNN has no bf16 convolutions there."""
    path = write_spec(train={"precision": "bf16"}, resources={"gpu": gpu})
    result = cli("validate", path)
    assert result.exit_code == 2, result.stdout
    assert result.stderr == (f"gpujob: {path}:3: train.precision: bf16, but resources.gpu {card} (compute capability "
                             f"{capability}) has no bf16, which needs 8.0 (Ampere) or newer; use fp16 (gpujob runs "
                             "it with a gradient scaler) or fp32\n")
    assert cli("validate", write_spec(train={"precision": "fp16"}, resources={"gpu": gpu})).exit_code == 0
    assert cli("validate", write_spec(train={"precision": "bf16"}, resources={"gpu": "A10G"})).exit_code == 0
    assert cli("validate", path, "--set", "resources.gpu=cpu").exit_code == 0  # bf16 on a CPU is fine


def test_bf16_on_a_t4_is_refused_at_submit_before_anything_is_made(write_spec, tmp_path):
    spec = write_spec(train={"precision": "bf16"}, resources={"gpu": "A10G"}, backend="modal")
    result = cli("submit", spec, "--gpu", "T4", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"gpujob: {spec}:") and "train.precision: bf16, but resources.gpu T4" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_catalogs_bf16_is_its_compute_capability():
    from runner.gpus import CATALOG

    assert {g.name for g in CATALOG if not g.bf16} == {"T4", "V100"}
    assert all(g.bf16 == (g.compute_capability >= 8.0) for g in CATALOG)


def test_an_unknown_section_made_by_set_is_blamed_on_set_not_the_file():
    """Issue 23: `--set trian.epochs=2` said "quickstart.yaml: trian: unknown field"."""
    result = cli("validate", "jobs/quickstart.yaml", "--set", "trian.epochs=2")
    assert result.exit_code == 2
    assert result.stderr == "gpujob: --set trian.epochs=2: trian: unknown field; did you mean `train`?\n"
    nested = cli("validate", "jobs/quickstart.yaml", "--set", "slurm.extra.deep=1")
    assert nested.stderr.startswith("gpujob: --set slurm.extra.deep=1: slurm.extra: unknown field")


def test_an_unknown_section_in_the_file_is_still_blamed_on_its_line(write_spec):
    path = write_spec(trian={"epochs": 2})
    result = cli("validate", path, "--set", "trian.seed=1")
    assert result.exit_code == 2 and result.stderr.startswith(f"gpujob: {path}:2: trian: unknown field")
