"""The seam between gpujob and Modal's SDK: the five things ModalService asks of Modal
(the volume, the output, an app run, a spawn, a call by its id), as a Protocol, and
SdkClient, which does them with the installed `modal` package.

Tests put a stand-in for Modal's servers at this seam (tests/modal_standin.py) and never
patch the SDK; tests/test_sdk_contracts.py checks each SDK call made here against the
installed SDK's signatures. What comes back mirrors Modal's own objects (a FunctionCall's
get/cancel/logs/object_id, a Volume's listdir/iterdir/read_file), so ModalService reads
Modal's answers and errors as they are."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from runner.backends.modal.service import import_modal


class ModalCall(Protocol):
    """What ModalService uses of a modal.FunctionCall."""

    @property
    def object_id(self) -> str: ...

    def get(self, timeout: float | None = None) -> dict: ...

    def cancel(self, terminate_containers: bool = False) -> None: ...

    @property
    def logs(self): ...  # .tail(entries) and .stream(): Modal's LogEntry objects


class ModalVolume(Protocol):
    """What ModalService uses of a modal.Volume: its files, read."""

    def listdir(self, path: str, recursive: bool = False) -> list: ...

    def iterdir(self, path: str, recursive: bool = True) -> Iterator: ...

    def read_file(self, path: str) -> Iterator[bytes]: ...


class ModalClient(Protocol):
    def volume(self) -> ModalVolume:
        """The volume that holds the run folders."""

    def output(self) -> AbstractContextManager:
        """The app's and its calls' output shown here while it lasts (modal.enable_output)."""

    def running(self, request, detach: bool) -> AbstractContextManager:
        """The request's app, run for the block (App.run): detached, it outlives this process."""

    def spawn(self, request) -> ModalCall:
        """The request's function, configured for the job, spawned with its arguments."""

    def call(self, call_id: str) -> ModalCall:
        """A call spawned earlier, by its id (from any process)."""


class SdkClient:
    """ModalClient through the installed `modal` package, with the credentials its client finds."""

    def __init__(self):
        self.modal = import_modal()

    def volume(self) -> ModalVolume:
        from runner.backends.modal.app import VOLUME_NAME

        return self.modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)

    def output(self) -> AbstractContextManager:
        return self.modal.enable_output()

    def running(self, request, detach: bool) -> AbstractContextManager:
        from runner.backends.modal.app import app_for

        return app_for(request).run(detach=detach)

    def spawn(self, request) -> ModalCall:
        from runner.backends.modal.app import function_for

        return function_for(request).spawn(*request.args())

    def call(self, call_id: str) -> ModalCall:
        return self.modal.FunctionCall.from_id(call_id)
