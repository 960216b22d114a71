"""`gpujob`'s entry point: Ctrl-C made one line before anything heavy imports, then every group
of commands registered on the one app, then the app run (a worker rank ends with os._exit)."""

from __future__ import annotations

import os
import sys

from runner.cli import interrupts

interrupts.install_if_this_is_gpujob()  # first: a Ctrl-C while typer, torch and the rest import is one line too

from runner.cli import jobs, lifecycle, monitoring, reports, sweep, tools  # noqa: E402,F401  (each registers its commands)
from runner.cli.app import app  # noqa: E402
from runner import invocation  # noqa: E402


def main() -> None:
    interrupts.install()
    invocation.remember()  # hints printed by this process and the ones it starts: as the user can type them
    if "--worker" in sys.argv:
        _worker_main()
    app()


def _worker_main() -> None:
    """One rank's process (`run ... --worker`) ends with os._exit once its work is done and its
    output flushed. At interpreter shutdown gloo's threads may still hold work objects whose
    destruction aborts the process (SIGABRT, "terminate called without an active exception",
    seen here on SLURM once the job had finished), turning a rank's 0 or 1 into 134; every file
    the worker writes is already written and fsync'd by then, so nothing is lost by skipping it."""
    try:
        code = app(standalone_mode=False)
    except SystemExit as err:
        code = err.code
    except BaseException:  # what the command's own handler did not turn into an exit code
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)
