"""The job spec: the user-facing contract, as Pydantic models.

Field names are fixed (README "Spec reference"); every section has defaults so a
short spec works. `load_spec` reads YAML, applies `--set` overrides and turns
validation errors into one line naming the field path and, where known, the file line.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator,
                      model_validator)

from runner.spec.datasets import BUILTIN_INFO, DatasetInfo
from runner.gpus import CATALOG, GpuRequest, parse_gpu
from runner.spec.reading import _did_you_mean, _shown
from runner.spec.sweep import SweepSpec
from runner.spec.targets import parse_target

# Where a job can run: the spec's `backend` values, the one list of names (runner/backends/registry.py
# maps each to its module, and a test holds the two together).
AUTO: Final = "auto"
BackendName = Literal["local", "modal", "docker", "vast", "slurm"]  # a type, so that mypy knows the spec's values
BACKENDS: tuple[str, ...] = get_args(BackendName)
BUILTIN_MODELS = ("mlp", "cnn", "resnet18", "resnet34", "resnet50")
BUILTIN_DATASETS = ("fashion_mnist", "mnist", "cifar10", "digits", "synthetic")
FACTORY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all but the tab


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # `lr: .inf` is a typo, never a setting

    @field_validator("*")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        # text fields become paths, sbatch lines and shell commands: a NUL or a newline there breaks them
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and CONTROL_CHARACTER.search(text):
                raise ValueError(f"control characters are not allowed here ({_shown(text)})")
        return value


def _builtin_or_factory(value: str, builtins: tuple[str, ...]) -> str:
    if value in builtins or FACTORY_PATH.match(value):
        return value
    raise ValueError(f"'{_shown(value)}' is not one of {', '.join(builtins)} or 'package.module:factory'"
                     f"{_did_you_mean(value, builtins)}")


class ModelSpec(Section):
    name: str = Field("mlp", description="mlp | cnn | resnet18 | resnet34 | resnet50 | package.module:factory")
    num_classes: PositiveInt | None = Field(None, le=100_000, description="defaults to the dataset's class count")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a factory model")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _builtin_or_factory(value, BUILTIN_MODELS)


class SyntheticSpec(Section):
    shape: list[PositiveInt] = Field([1, 28, 28], description="channels, height, width")
    num_classes: PositiveInt = Field(10, description="one noisy prototype image per class")
    train_samples: PositiveInt = Field(2048, description="samples in the training split")
    test_samples: PositiveInt = Field(512, description="samples in the test split")

    @field_validator("shape")
    @classmethod
    def _chw(cls, value: list[int]) -> list[int]:
        if len(value) != 3:
            raise ValueError("shape is [channels, height, width]")
        return value


class DataSpec(Section):
    dataset: str = Field("digits", description="fashion_mnist | mnist | cifar10 | digits | synthetic | package.module:factory")
    root: str = Field("./data", description="where datasets live (relative to the working directory)")
    download: bool = Field(True, description="fetch a torchvision dataset that is not under root")
    batch_size: PositiveInt = Field(128, description="global batch size, split across workers")
    num_workers: int = Field(2, ge=0, description="DataLoader workers (factory datasets only)")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="used when dataset is synthetic")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a factory dataset")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        return _builtin_or_factory(value, BUILTIN_DATASETS)


class OptimizerSpec(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, description="learning rate (the peak, under a schedule)")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD's momentum")
    weight_decay: float = Field(0.0, ge=0, description="decoupled for adamw")
    schedule: Literal["none", "cosine", "onecycle"] = Field("none", description="steps once per optimizer step")


class TrainSpec(Section):
    epochs: PositiveInt = Field(1, description="passes over the training split")
    max_steps: PositiveInt | None = Field(None, description="optional cap on optimizer steps, for smoke runs")
    # torch and numpy take seeds this size
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds the model, the batch order and every RNG")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="bf16 and fp16 run under autocast; fp16 "
                                                      "with a gradient scaler, on CUDA or MPS")
    compile: bool = Field(False, description="torch.compile the model")
    log_every_steps: PositiveInt = Field(50, description="a step line in metrics.jsonl every N steps")
    checkpoint_every_minutes: float = Field(
        10, ge=0, description="checkpoint at the first step boundary after this long (0: every step); "
        "also on SIGTERM/SIGINT and at the end")
    stop_on_nan: bool = Field(True, description="stop when the loss is NaN or infinite, keeping the last good checkpoint")
    collective_timeout_s: PositiveInt = Field(
        300, le=7 * 24 * 3600, description="DDP: a rank that waits this long for the others fails the job "
        "(catches hung ranks)")
    stop_grace_s: PositiveInt = Field(30, le=3600, description="how long a stopped job (Ctrl-C, cancel, "
                                      "preemption, the time limit) may take to write its checkpoint before it is "
                                      "killed; raise it for models whose checkpoint takes longer")
    step: str | None = Field(None, description="package.module:function(model, batch) -> loss or (loss, "
                             "{name: value}): your own training step; default: cross-entropy on (x, labels)")

    @field_validator("step")
    @classmethod
    def _step_path(cls, value: str | None) -> str | None:
        if value is None or FACTORY_PATH.match(value):
            return value
        raise ValueError(f"'{_shown(value)}' is not 'package.module:function'")

    # after `step`: which metrics exist depends on it (docs/targets-and-budgets.md)
    stop_when: dict[str, str] = Field(default_factory=dict, description="stop at the end of the first epoch where "
                                      "all of these hold, e.g. {test_accuracy: \">= 0.95\"}; metrics: test_accuracy, "
                                      "test_loss, train_loss, or a value your train.step names")

    @field_validator("stop_when", mode="before")
    @classmethod
    def _conditions(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            parse_target(value, user_step=info.data.get("step") is not None)
        return value


class ResourcesSpec(Section):
    gpu: str | None = Field(None, description="TYPE[:COUNT] from the GPU catalog, or cpu")
    timeout_minutes: PositiveInt | PositiveFloat = Field(60, le=365 * 24 * 60, description="the job is stopped "
                                                         "(with a checkpoint) after this long; fractions allowed")
    processes: PositiveInt = Field(1, le=256, description="DDP workers per node on a machine without CUDA GPUs")
    nodes: PositiveInt = Field(1, description="machines (SLURM nodes); workers per node from gpu count or processes")
    max_usd: PositiveFloat | None = Field(None, description="rented backends (modal, vast): checkpoint and stop "
                                          "before the run's cost (all its attempts) passes this many US$")

    @field_validator("gpu", mode="before")
    @classmethod
    def _number_as_written(cls, value: Any) -> Any:
        # `gpu: 4090` arrives as a number: read it as the text written, to answer "write RTX4090"
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("gpu")
    @classmethod
    def _catalogued(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            request = parse_gpu(value)
        except ValueError as err:
            hint = _gpu_hint(value)
            raise ValueError(f"'{_shown(value)}' is not a GPU type; write `{hint}`" if hint else str(err)) from None
        return None if request is None else str(request)

    @property
    def gpu_request(self) -> GpuRequest | None:
        return parse_gpu(self.gpu) if self.gpu else None

    @property
    def workers_per_node(self) -> int:
        """As the spec asks: one per GPU, or `processes` without GPUs. (launch.workers_per_node
        also checks the GPUs of the machine it runs on.)"""
        request = self.gpu_request
        return request.count if request else self.processes


def _gpu_hint(text: str) -> str | None:
    """`4090` or `rtx 4090` -> `RTX4090`: the one catalog name the type is part of, or close to."""
    kind, _, count = text.partition(":")
    squashed = re.sub(r"[\s_-]", "", kind).upper()
    names = {key.replace("-", ""): gpu.name for gpu in CATALOG for key in (gpu.name, *gpu.aliases)}
    if squashed in names and kind.strip().upper() in names:  # a known type: the count is what is wrong
        return None
    within = {names[key] for key in names if len(squashed) >= 2 and (squashed in key or key in squashed)}
    close = difflib.get_close_matches(squashed, list(names), n=1, cutoff=0.7)
    suggestion = within.pop() if len(within) == 1 else (names[close[0]] if close else None)
    return suggestion and suggestion + (f":{count.strip()}" if count.strip() else "")


class SlurmSpec(Section):
    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    gres_type: str | None = Field(None, description="GPU type as this cluster names it in --gres, e.g. a100; "
                                  "default: any GPU")
    cpus_per_task: PositiveInt | None = Field(None, description="each task's CPUs (also given to srun), and its "
                                              "OMP_NUM_THREADS")
    mem: str | None = Field(None, description="memory per node, e.g. 32G")
    sbatch_lines: list[str] = Field(default_factory=list, description="extra '#SBATCH ...' options, e.g. --constraint=a100")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job, e.g. module load cuda")
    python: str | None = Field(None, description="python on the nodes; default: the one that submits")


class DockerSpec(Section):
    image: str = Field("gpujob:latest", description="image to run, built by `gpujob image build`")
    gpus: str | None = Field(None, description="this machine's GPUs given to the container: all, a count or none; "
                             "default: resources.gpu's count where NVIDIA's container runtime is installed, else none")

    @field_validator("gpus")
    @classmethod
    def _all_count_or_none(cls, value: str | None) -> str | None:
        if value is None or value in ("all", "none") or (value.isdigit() and int(value) > 0):
            return value
        raise ValueError(f"'{value}' is not all, a GPU count or none")


class VastSpec(Section):
    image: str | None = Field(None, description="your pushed image (gpujob image build --tag T --push); "
                              "required for backend: vast")
    max_dollars_per_hour: float | None = Field(None, gt=0, description="price cap for the whole instance "
                                               "(all its GPUs and its disk), US$")
    min_reliability: float = Field(0.98, ge=0, le=1, description="vast.ai's host reliability score, 0 to 1")
    disk_gb: PositiveInt = Field(40, description="instance disk: the image, the data and the run folder")
    interruptible: bool = Field(False, description="bid for an interruptible instance: cheaper, paused when "
                                "outbid; the job then resumes from its last checkpoint")
    min_cuda: float = Field(13.0, description="lowest CUDA version the host's driver must support "
                            "(the image's torch is built for CUDA 13)")
    extra_filters: str = Field("", description="more `vastai search offers` filters, e.g. 'geolocation=US inet_down>=200'")
    startup_minutes: PositiveInt = Field(20, description="how long the instance may take to pull the image and start")


class CodeSpec(Section):
    include: list[str] = Field(default_factory=list, description="more of your modules to ship with the job, "
                               "beyond those the spec's package.module paths name (e.g. a utils package they import)")
    max_mb: PositiveFloat = Field(10, le=1000, description="refuse to ship more code than this (data belongs in "
                                  "data.root, not in the package)")

    @field_validator("include")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"'{_shown(name)}' is not a module name (package or package.module)")
        return value


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=80, description="becomes part of the run folder name")
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    backend: Literal["auto", BackendName] = Field(AUTO, description="auto: here when this machine has resources.gpu "
                                             "(or none is asked for), else a service that rents it (Modal)")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, description="options for backend: slurm")
    docker: DockerSpec = Field(default_factory=DockerSpec, description="options for backend: docker")
    vast: VastSpec = Field(default_factory=VastSpec, description="options for backend: vast")
    code: CodeSpec = Field(default_factory=CodeSpec, description="your code shipped with the job (model, data "
                           "and step factories are found beside the spec, here, or on PYTHONPATH)")
    sweep: SweepSpec | None = Field(None, description="`gpujob sweep`: the fields to vary and how trials are "
                                    "judged; `gpujob submit` ignores it")
    # A webhook URL is a credential: never dumped (spec.yaml, job/), it reaches the job through the
    # environment (runner/reports/notify.py)
    notify: list[str] = Field(default_factory=list, exclude=True, description="webhook URLs the job tells when it "
                              "starts, resumes and ends (Slack's or any that takes JSON); never written to the run folder")

    @field_validator("notify")
    @classmethod
    def _webhooks(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
                raise ValueError("each entry is a webhook URL, http:// or https://HOST/...")
        return value

    @model_validator(mode="after")
    def _classes_from_the_dataset(self) -> "JobSpec":
        # the resolved spec shows the class count the model gets; a factory dataset's is known only once loaded
        info = dataset_info(self.data) if self.model.num_classes is None else None
        if info is not None:
            self.model.num_classes = info.num_classes
        return self

    def to_yaml(self) -> str:
        # no `sweep: null` in every run's spec.yaml: the section is there only where it was written
        return yaml.safe_dump(self.model_dump(mode="json", exclude={"sweep"} if self.sweep is None else None),
                              sort_keys=False)


def dataset_info(data: DataSpec) -> DatasetInfo | None:
    """Shape and classes of a builtin dataset; None for a factory dataset (known only once loaded)."""
    if data.dataset == "synthetic":
        s = data.synthetic
        channels, height, width = s.shape  # _chw holds it to three
        return DatasetInfo((channels, height, width), s.num_classes, (0.5,) * s.shape[0], (0.25,) * s.shape[0],
                           s.train_samples + s.test_samples, s.test_samples)
    return BUILTIN_INFO.get(data.dataset)
