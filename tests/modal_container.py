"""One attempt of one call in one Modal container, as Modal's own container entrypoint runs a
sync function (modal/_container_entrypoint.py): SIGUSR1, which FunctionCall.cancel() makes
Modal send, raises InputCancellation wherever the function is (unless the function handles it);
the return value, or the exception raised, is the attempt's result. Retries, timeouts and
what the caller sees are tests/modal_standin.py's part, as they are Modal's servers' part.

    python -m tests.modal_container REQUEST.json RESULT.json

REQUEST.json is a ModalRequest; the volume is the folder named by GPUJOB_VOLUME_PATH. A spawn
made inside the container (a chain's next call, runner/backends/modal/chain.py) goes to the
stand-in through the folder named by GPUJOB_STANDIN_SPAWNS, as Modal's client sends it to
Modal's servers.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from modal.exception import InputCancellation

SPAWNS_ENV = "GPUJOB_STANDIN_SPAWNS"  # the folder where the stand-in takes spawns made in a container


def _cancelled(signum, frame):
    raise InputCancellation("Input was cancelled by user")


def _spawn_through_the_standin(request) -> str:
    """A spawn made inside the container, as Modal's servers take it: handed to the stand-in
    (tests/modal_standin.py serves it as a new call) and answered with the call's id, or with
    the error Modal raised."""
    import dataclasses
    import os
    import time
    import uuid

    import modal.exception

    asked = Path(os.environ[SPAWNS_ENV]) / f"spawn-{uuid.uuid4().hex}.json"
    answer = asked.with_suffix(".answer")
    part = asked.with_suffix(".part")
    part.write_text(json.dumps(dataclasses.asdict(request)))
    part.rename(asked)
    deadline = time.monotonic() + 120
    while not answer.exists():
        if time.monotonic() > deadline:
            raise modal.exception.ConnectionError("the stand-in did not answer the spawn")
        time.sleep(0.05)
    said = json.loads(answer.read_text())
    if "error" in said:
        raise getattr(modal.exception, said["error"], modal.exception.Error)(said["message"])
    return said["call_id"]


def main(request_file: str, result_file: str) -> None:
    signal.signal(signal.SIGUSR1, _cancelled)
    from runner.backends.modal import app
    from runner.backends.modal.request import ModalRequest

    app.spawn_call = _spawn_through_the_standin

    request = ModalRequest(**json.loads(Path(request_file).read_text()))
    try:
        result: dict = {"return": app.function_for(request).local(*request.args())}
    except InputCancellation:
        result = {"cancelled": True}
    except Exception as err:  # Modal logs the traceback and retries the input
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        result = {"raised": type(err).__name__, "message": str(err)}
    tmp = Path(result_file).with_suffix(".part")
    tmp.write_text(json.dumps(result))
    tmp.rename(result_file)


if __name__ == "__main__":
    main(*sys.argv[1:3])
