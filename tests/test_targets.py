"""train.stop_when (docs/targets-and-budgets.md): a run stops at the end of the first epoch that
reaches its target, says so in summary.json, and a resume does nothing more."""


import pytest

from runner.errors import GpujobError
from runner.spec.load import load_spec



@pytest.mark.parametrize("stop_when, said", [
    ({"test_accuracy": ">= 95"}, "test_accuracy is a fraction from 0 to 1"),
    ({"test_acc": ">= 0.9"}, "did you mean `test_accuracy`"),
    ({"test_loss": "about 0.2"}, "'about 0.2' is not a condition"),
    ({"test_loss": 0.2}, "is not a condition"),
    ({"test_loss": "=> 0.2"}, "is not a condition"),
])
def test_a_bad_target_names_the_field(write_spec, stop_when, said):
    with pytest.raises(GpujobError) as err:
        load_spec(write_spec(train={"stop_when": stop_when}))
    assert err.value.exit_code == 2
    assert "train.stop_when" in err.value.message and said in err.value.message


def test_a_user_step_has_no_accuracy_but_its_own_values(write_spec):
    with pytest.raises(GpujobError, match="test_accuracy is measured by the default step only"):
        load_spec(write_spec(train={"step": "job:step", "stop_when": {"test_accuracy": ">= 0.9"}}))
    spec = load_spec(write_spec(train={"step": "job:step", "stop_when": {"iou": "> 0.5", "test_loss": "<= .2"}}))
    assert spec.train.stop_when == {"iou": "> 0.5", "test_loss": "<= .2"}
