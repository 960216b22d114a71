"""One attempt of one call in one Modal container, as Modal's own container entrypoint runs a
sync function (modal/_container_entrypoint.py): SIGUSR1, which FunctionCall.cancel() makes
Modal send, raises InputCancellation wherever the function is (unless the function handles it);
the return value, or the exception raised, is the attempt's result. Retries, timeouts and
what the caller sees are tests/modal_standin.py's part, as they are Modal's servers' part.

    python -m tests.modal_container REQUEST.json RESULT.json

REQUEST.json is a ModalRequest; the volume is the folder named by GPUJOB_VOLUME_PATH.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from modal.exception import InputCancellation


def _cancelled(signum, frame):
    raise InputCancellation("Input was cancelled by user")


def main(request_file: str, result_file: str) -> None:
    signal.signal(signal.SIGUSR1, _cancelled)
    from runner.backends.modal.backend import ModalRequest

    request = ModalRequest(**json.loads(Path(request_file).read_text()))
    try:
        result: dict = {"return": request.function().local(*request.args())}
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
