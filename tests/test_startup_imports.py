"""Start-up time goes to the phase that spent it (issue 29: "most of it building the model: 6.4 s"
for an nn.Linear(1, 1), where an import profile showed torch._dynamo being imported).

gpujob's own code imports nothing of torch.compile without train.compile; torch imports
torch._dynamo itself when an optimizer is built (and when a step's FLOPs are counted), so the
worker imports it at a set moment and timing.json keeps that as a phase of its own."""

from __future__ import annotations

import json
import subprocess
import sys

from runner.reports.diagnosis import diagnose, lines
from tests.conftest import REPO, cli

BUILD_WITHOUT_COMPILE = """
import sys
from runner.spec.load import load_spec
from runner.training.models import build_model
from runner.training.steps import step_for
spec = load_spec("jobs/quickstart.yaml")
model = build_model(spec.model, (1, 8, 8), 10)
step_for(spec)
print("torch._dynamo" in sys.modules)
"""


def test_building_the_model_without_compile_imports_no_dynamo():
    out = subprocess.run([sys.executable, "-c", BUILD_WITHOUT_COMPILE], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_torch_dynamo_is_a_start_up_phase_of_its_own(write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      train={"epochs": 1, "max_steps": 3, "log_every_steps": 1})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    phases = json.loads((result.run_dir / "timing.json").read_text())["phases"]
    assert phases["loop_entered_s"] <= phases["dynamo_imported_s"] <= phases["data_loaded_s"] <= phases["model_built_s"]
    shown = cli("show", result.run_dir)
    assert shown.exit_code == 0, shown.stderr
    assert "torch._dynamo imported" in shown.stdout


def test_the_diagnosis_blames_the_import_not_the_model():
    phases = {"loop_entered_s": 2.0, "dynamo_imported_s": 8.4, "data_loaded_s": 8.6, "model_built_s": 8.7}
    timing = {"epochs": [{"wall_s": 0.5}], "total_s": 10.0, "time_to_first_step_s": 9.0, "phases": phases}
    said = lines(diagnose({"world_size": 1}, timing, {}))
    assert said[0].startswith("start-up-bound:")
    assert "most of it importing torch._dynamo" in said[0] and "6.4 s" in said[0]
