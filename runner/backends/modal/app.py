"""The Modal App: the image, the volume and the one function Modal runs for gpujob.

Modal imports this module again inside its containers, so everything here is defined at
import time and nothing runs: the image is Debian with the project's pinned requirements
(images/requirements.txt, the list the Dockerfile installs too) and gpujob's own code; the
volume holds run folders at /runs; and `train_remote` is a thin launcher for the worker
every backend runs, `gpujob run SPEC --run-dir /runs/NAME --nproc-per-node auto --resume`,
called in-process so that Modal's stop signals reach the launcher directly.

The GPU, timeout and retries of one job come from its spec through `train_remote.with_options`
(runner/backends/modal/backend.py): Modal's documented way to configure a function per call
(https://modal.com/docs/guide/dynamic-function-config).

Nothing is billed once a call has ended: a container serves one input and stops
(`single_use_containers`; a retry gets a fresh one anyway), where Modal would otherwise keep an
idle container up, billed, for its scale-down window (60 s by default); and the call sets that
window to Modal's least, SCALEDOWN_WINDOW_S, for a container that starts and gets no input.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import modal

from runner.backends.modal import chain
from runner.backends.modal.request import TIMEOUT_GRACE_S, ModalRequest, call_limit_s, retry_policy

APP_NAME = "gpujob"
VOLUME_NAME = "gpujob-runs"
VOLUME_MOUNT = "/runs"
VOLUME_PATH_ENV = "GPUJOB_VOLUME_PATH"  # where train_remote finds the volume; tests point it at a folder
PYTHON_VERSION = "3.11"  # the version uv.lock resolves images/requirements.txt for
REQUIREMENTS = Path(__file__).resolve().parents[3] / "images" / "requirements.txt"
LOCAL_SOURCES = ("runner",)
DEFAULT_TIMEOUT_S = 60 * 60 + TIMEOUT_GRACE_S  # the spec's default; each job sets its own
FIRST_ATTEMPT = "first-attempt-at"  # in the run's job/ on the volume: {"submission", "at"}
CODE_MOUNT = "/gpujob/code"  # where a job's own code (its run folder's job/code) is in the container
CODE_MOUNT_ENV = "GPUJOB_CODE_MOUNT"  # tests point it at the folder a stand-in image put the code in

# The requirements file is read on this machine when the image is built, never in the container.
image = (modal.Image.debian_slim(python_version=PYTHON_VERSION)
         .uv_pip_install(requirements=[str(REQUIREMENTS)])
         .add_local_python_source(*LOCAL_SOURCES))
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
app = modal.App(APP_NAME)


@app.function(image=image, volumes={VOLUME_MOUNT: volume}, timeout=DEFAULT_TIMEOUT_S, retries=retry_policy(),
              single_use_containers=True,
              include_source=False)  # the image adds runner/ itself (LOCAL_SOURCES)
def train_remote(spec_yaml: str, run_name: str, submission: str) -> dict:
    """Run one job into VOLUME/run_name, resuming what an earlier attempt left there.
    `submission` tells this submit or resume apart from the others of the run (run_job)."""
    return run_job(spec_yaml, run_name, submission)


def train_remote_with_code(spec_yaml: str, run_name: str, submission: str) -> dict:
    """train_remote for a job that brings its own code: decorated per job (`with_code`), since
    its image adds that job's files. Modal's container finds it here by name, undecorated, as
    it does any function decorated outside the module's global scope."""
    return run_job(spec_yaml, run_name, submission)


def image_with_code(code_dir: str) -> modal.Image:
    """The image plus the folder `code_dir` (the run's job/code), added as local files at
    CODE_MOUNT: mounted when the container starts, so the image itself is not rebuilt."""
    return image.add_local_dir(code_dir, remote_path=CODE_MOUNT)


@functools.cache  # one app per folder: the function and the app that runs it must agree
def with_code(code_dir: str) -> tuple[modal.App, modal.Function]:
    """An app of its own whose one function runs a job in image_with_code(code_dir)."""
    own = modal.App(APP_NAME)
    function = own.function(image=image_with_code(code_dir),
                            volumes={VOLUME_MOUNT: volume}, timeout=DEFAULT_TIMEOUT_S, retries=retry_policy(),
                            single_use_containers=True, include_source=False,
                            name="train_remote")(train_remote_with_code)
    return own, function


def function_for(request: ModalRequest) -> modal.Function:
    """The very Modal function that is shipped, configured for this job (`request`)."""
    base = with_code(request.code_dir)[1] if request.code_dir else train_remote
    return base.with_options(**request.options())


def app_for(request: ModalRequest) -> modal.App:
    """The app the job's function belongs to, which `app.run()` starts for the call."""
    return with_code(request.code_dir)[0] if request.code_dir else app


def image_for(request: ModalRequest) -> modal.Image:
    """The job's image: gpujob's, plus the job's code where it brings some."""
    return image_with_code(request.code_dir) if request.code_dir else image


def run_job(spec_yaml: str, run_name: str, submission: str) -> dict:
    """`gpujob run SPEC --run-dir RUNS/run_name --nproc-per-node auto --resume`, in this process.

    Returns {"exit_code", "message"} for an outcome a retry would not change (done, bad spec,
    the job's own failure); raises when the job was stopped by a signal, so that Modal runs
    it again and it resumes from its checkpoint.
    """
    from runner.errors import INTERRUPTED, PREEMPTED, GpujobError
    from runner.launching.launcher import run_on_this_node, workers_per_node
    from runner.launching.topology import Topology
    from runner.spec.load import load_spec

    in_container = not modal.is_local()
    runs_root = volume_root()
    _ready_to_run(in_container, runs_root / run_name)
    began, handover = time.time(), None
    cancelled: list[bool] = []
    previous = _cancel_becomes_a_stop(cancelled)
    try:
        with tempfile.TemporaryDirectory(prefix="gpujob-modal-") as scratch:
            spec_file = Path(scratch, "spec.yaml")
            spec_file.write_text(spec_yaml)
            spec = load_spec(spec_file)  # validated exactly as `gpujob run SPEC` would
        # resources.timeout_minutes caps each submission, not each attempt: Modal restarts its
        # timeout with every retry, so an attempt gets only what the submission's earlier ones
        # left; a `gpujob resume` is a new submission, with a limit of its own.
        used_s = time.time() - _submission_began_at(runs_root / run_name, submission)
        if used_s >= spec.resources.timeout_minutes * 60:
            return {"exit_code": 1, "message": f"the job ran past resources.timeout_minutes "
                                               f"({spec.resources.timeout_minutes} min) across its attempts"}
        handover = chain.handover_for(spec, runs_root / run_name, used_s)  # a job longer than one call
        run_on_this_node(spec, Topology(workers_per_node(spec)), runs_root / run_name, runs_root,
                         started=time.perf_counter() - used_s, resume=True)
    except _CancelledBeforeTraining:
        return {"exit_code": INTERRUPTED, "message": "cancelled before training started"}
    except GpujobError as err:
        if err.exit_code in (PREEMPTED, INTERRUPTED):
            if cancelled:  # `gpujob cancel`: checkpointed, and Modal does not retry a cancelled input
                return {"exit_code": INTERRUPTED, "message": f"cancelled: {err.message}"}
            if handover is not None and handover.fired.is_set():  # this call's own limit, not a preemption
                handover.cancel()
                return _hand_over(spec, run_name, submission, handover, began, in_container)
            raise RuntimeError(f"{err.message} (Modal starts it again; it resumes from the checkpoint)") from None
        return {"exit_code": err.exit_code, "message": err.message}
    finally:
        if handover is not None:
            _end_of_attempt(handover, runs_root / run_name, submission, began)
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)
        if in_container:
            volume.commit()  # background commits may lag; the client reads the folder right after
    return {"exit_code": 0, "message": ""}


def _ready_to_run(in_container: bool, run_dir: Path) -> None:
    """In Modal's container, the volume as the last attempt committed it, and workers that import
    this runner; the job's own code found before any other copy: where its image carries it, or,
    in a chain's later calls (spawned with gpujob's own image), the copy the chain keeps."""
    if in_container:
        volume.reload()  # a restarted attempt must see the checkpoints the last one committed
        _workers_import_this_runner()
    code = _code_mount()
    if not code.is_dir():
        code = chain.kept_code(run_dir)
    if code.is_dir():
        from runner.usercode.imports import CODE_PATHS

        os.environ[CODE_PATHS] = str(code)


def _code_mount() -> Path:
    return Path(os.environ.get(CODE_MOUNT_ENV, CODE_MOUNT))


def _end_of_attempt(handover, run_dir: Path, submission: str, began: float) -> None:
    """A chained call's attempt ends: its timer stopped, its line in the calls' log (a handover
    logs its own attempt before it spawns the successor)."""
    handover.cancel()
    if not handover.logged:
        chain.log_attempt(run_dir, submission, chain.calls_so_far(run_dir, submission), began, handed_over=False)


def spawn_call(request) -> str:
    """Spawn `request` from inside this container (a chain's next call); its call id. Modal
    documents with_options for a call made "from ... another Function" (chain.py says what else
    this relies on). The tests' container puts the stand-in's spawn here."""
    return function_for(request).spawn(*request.args()).object_id


def _hand_over(spec, run_name: str, submission: str, handover, began: float, in_container: bool) -> dict:
    """This call stopped itself before its limit with a checkpoint: spawn the next call of the
    chain, which resumes from it. A call that trained nothing past its start-up ends the chain,
    which would otherwise spawn calls that never get anywhere."""
    run_dir = volume_root() / run_name
    if chain.newest_step(run_dir) <= handover.step_at_start:
        return {"exit_code": 1, "message": f"the call stopped at Modal's per-call limit ({call_limit_s()} s) "
                                           "before it saved a checkpoint past its start-up; nothing to continue"}
    # Logged before the spawn: the successor reloads the volume as it starts and rewrites the log
    # as it ends, so this call's line must be committed before the successor exists.
    chain.keep_code(_code_mount(), run_dir)  # the next call's image is gpujob's own, without the job's code
    place = chain.calls_so_far(run_dir, submission)
    chain.log_attempt(run_dir, submission, place, began, handed_over=True)
    handover.logged = True
    if in_container:
        volume.commit()  # the successor's first reload must find this call's checkpoint and line
    try:
        next_call = spawn_call(chain.successor_request(spec, run_name, submission))
    except BaseException:
        chain.log_attempt(run_dir, submission, place, began, handed_over=False, replace_last=True)
        raise  # Modal retries this call, which resumes from the checkpoint and hands over again
    chain.record_handover(run_dir, submission, place, next_call)  # committed as run_job returns
    print(f"gpujob: this call reached Modal's per-call limit; the job continues in call {next_call}", flush=True)
    return {"exit_code": 0, "message": f"continued in call {next_call}", "next_call": next_call}


def volume_root() -> Path:
    """Where train_remote finds the volume: VOLUME_MOUNT in Modal's container."""
    return Path(os.environ.get(VOLUME_PATH_ENV, VOLUME_MOUNT))


class _CancelledBeforeTraining(Exception):
    pass


def _submission_began_at(run_dir: Path, submission: str) -> float:
    """When this submission's first attempt began (wall clock), kept in the run folder on the
    volume: Modal's retries of the submission find it there; a new submission replaces it."""
    mark = run_dir / "job" / FIRST_ATTEMPT
    try:
        kept = json.loads(mark.read_text())
        if kept["submission"] == submission:
            return float(kept["at"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: this attempt is the submission's first
    from runner.runs.files import atomic_write

    now = time.time()
    mark.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(mark, json.dumps({"submission": submission, "at": now}).encode() + b"\n")
    return now


def _cancel_becomes_a_stop(cancelled: list):
    """Modal cancels a running call (FunctionCall.cancel, what `gpujob cancel` sends) with SIGUSR1,
    which its own handler turns into an exception wherever the function is: mid-step, with no
    checkpoint. Here it becomes the stop that SIGTERM asks for (the training loop, or the launcher
    and its workers, checkpoint and exit), or, before anything is trained, a quick way out.
    Returns the handler it replaced (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_cancel(signum, frame):
        cancelled.append(True)
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop):
            raise _CancelledBeforeTraining()
        stop(signal.SIGTERM, frame)

    return signal.signal(signal.SIGUSR1, on_cancel)


def _workers_import_this_runner() -> None:
    """The launcher starts workers as `python -m runner.cli`; make sure they find the runner
    package this container was given (Modal puts it under /root), whatever their directory."""
    import runner

    root = str(Path(runner.__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
