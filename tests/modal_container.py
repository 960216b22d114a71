"""One Modal container running one call, as Modal's own container entrypoint runs a sync function
(modal/_container_entrypoint.py): SIGUSR1, which FunctionCall.cancel() makes Modal send, raises
InputCancellation wherever the function is; an exception other than that is retried up to the
function's retries; the return value, or the last exception, is the call's result.

    python -m tests.modal_container REQUEST.json RESULT.json

REQUEST.json is a ModalRequest; the volume is the folder named by GPUJOB_VOLUME_PATH.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from modal.exception import InputCancellation

from runner.backends.modal.backend import ModalRequest


def _cancelled(signum, frame):
    raise InputCancellation("Input was cancelled by user")


def main(request_file: str, result_file: str) -> None:
    request = ModalRequest(**json.loads(Path(request_file).read_text()))
    signal.signal(signal.SIGUSR1, _cancelled)
    result: dict = {}
    for attempt in range(request.retries + 1):
        try:
            result = {"return": request.function().local(request.spec_yaml, request.run_name), "attempts": attempt + 1}
            break
        except InputCancellation:
            result = {"raised": "InputCancellation", "attempts": attempt + 1}
            break
        except Exception as err:  # Modal retries the input, which resumes from its checkpoint
            result = {"raised": type(err).__name__, "message": str(err), "attempts": attempt + 1}
            print(f"attempt {attempt + 1} raised {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    tmp = Path(result_file).with_suffix(".part")
    tmp.write_text(json.dumps(result))
    tmp.rename(result_file)


if __name__ == "__main__":
    main(*sys.argv[1:3])
