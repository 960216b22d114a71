"""One job as Modal will run it (ModalRequest: the GPU in Modal's syntax, the time limit, the
retries, the world size, the spec and the run's name) and the limits it is built within: Modal's
most for one call, the grace past the job's own limit, the retries and the scale-down window.

Below app.py on purpose: the container rebuilds a chain's next request from the spec (chain.py),
and the client plans one (backend.py), without either importing the other. The Modal objects a
request runs as (its function, app and image) are app.py's: function_for(request) and the rest."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from runner.errors import bad_input
from runner.reports.notify import NOTIFY_ENV
from runner.spec.model import JobSpec

APP, VOLUME = "gpujob", "gpujob-runs"  # app.py's names, without importing modal
TIMEOUT_GRACE_S = 600  # past resources.timeout_minutes: image pull, data download, the final save
# Modal restarts a preempted input by itself; these retries also cover a crashed container.
# Every attempt resumes from the run folder's last checkpoint.
RETRIES = 3
SCALEDOWN_WINDOW_S = 2  # the least Modal accepts: how long a container without an input is kept
# "users may specify timeout durations between 1 second and 24 hours"
# (https://modal.com/docs/guide/timeouts): the longest one Modal call may run.
CALL_LIMIT_S = 24 * 60 * 60
CALL_LIMIT_ENV = "GPUJOB_MODAL_CALL_LIMIT_S"  # tests lower the limit to seconds
MAX_GPUS = {"A10G": 4}  # per container, where Modal allows fewer than the catalog's 8


def call_limit_s() -> int:
    return int(float(os.environ.get(CALL_LIMIT_ENV) or CALL_LIMIT_S))


def is_chained(spec: JobSpec) -> bool:
    """Whether the job may outlast one Modal call (then it runs as a chain of calls: chain.py)."""
    return spec.resources.timeout_minutes * 60 + TIMEOUT_GRACE_S > call_limit_s()


def retry_policy(max_retries: int = RETRIES):
    import modal

    # A fixed short delay: a retry is a restart from a checkpoint, nothing to back off from.
    return modal.Retries(max_retries=max_retries, backoff_coefficient=1.0, initial_delay=10.0)


@dataclass(frozen=True)
class ModalRequest:
    """One job as Modal will run it: train_remote.with_options(**options).spawn(*args())."""

    gpu: str | None  # Modal's syntax, e.g. "A10G:2"; None runs on CPU
    timeout_s: int
    retries: int
    world_size: int
    spec_yaml: str
    run_name: str  # the run folder's name, locally and on the volume
    code_dir: str | None = None  # the run's job/code: the user's code, which the image adds
    # This submit's or resume's own id, new for each spawn (ModalBackend.send): Modal's retries
    # of one submission share its time limit, a resume gets a limit of its own (app.run_job).
    submission: str = ""
    # The meter's variables (runner/backends/billing.py), new for each spawn like `submission`: not
    # part of what the run was sent (job/request.json), which a resume sends again.
    billing: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "billing"}

    @classmethod
    def from_json(cls, data: dict) -> ModalRequest:
        return cls(**data)

    def options(self) -> dict:
        import modal

        gpu = {"gpu": self.gpu} if self.gpu else {}  # with_options cannot unset a GPU; the base has none
        secrets = {"secrets": [modal.Secret.from_dict(self.secret_env())]} if self.secret_env() else {}
        env = {"env": dict(self.billing)} if self.billing else {}  # the price and budget are no secret
        return {**gpu, "timeout": self.timeout_s, "retries": retry_policy(self.retries),
                "scaledown_window": SCALEDOWN_WINDOW_S, **secrets, **env}

    @staticmethod
    def secret_env() -> dict[str, str | None]:
        """What the container gets as a Modal secret (the job's webhooks), read from this process's
        environment as the call is made: a resume gets what the resuming process has."""
        webhooks = os.environ.get(NOTIFY_ENV)
        return {NOTIFY_ENV: webhooks} if webhooks else {}

    def args(self) -> tuple[str, str, str]:
        """What train_remote is called with."""
        return self.spec_yaml, self.run_name, self.submission

    def call(self) -> str:
        gpu = f"gpu={self.gpu!r}, " if self.gpu else ""
        return (f"app {APP!r}: train_remote.with_options({gpu}timeout={self.timeout_s}, "
                f"retries={self.retries}, scaledown_window={SCALEDOWN_WINDOW_S}).spawn(<spec yaml>, "
                f"{self.run_name!r}, <submission id>)")


def modal_request(spec: JobSpec, run_name: str) -> ModalRequest:
    if spec.resources.nodes > 1:
        raise bad_input("resources.nodes: backend modal runs a job in one container (up to 8 GPUs); set nodes: 1")
    gpu = _modal_gpu(spec)
    # Past Modal's per-call limit the job runs as a chain of calls of that limit each (chain.py).
    timeout_s = min(math.ceil(spec.resources.timeout_minutes * 60) + TIMEOUT_GRACE_S, call_limit_s())
    return ModalRequest(gpu, timeout_s, RETRIES, spec.resources.workers_per_node, spec.to_yaml(), run_name)


def _modal_gpu(spec: JobSpec) -> str | None:
    """resources.gpu in Modal's syntax, within what Modal attaches to one container; None: CPU."""
    request = spec.resources.gpu_request
    if request is None:
        return None
    try:
        name = request.on("modal")
    except ValueError as err:
        raise bad_input(f"resources.gpu: {err}") from None
    most = MAX_GPUS.get(request.type.name, 8)
    if request.count > most:
        raise bad_input(f"resources.gpu: Modal attaches at most {most} {name} GPUs to a container")
    return f"{name}:{request.count}"
