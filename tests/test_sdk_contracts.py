"""Every call gpujob makes into the Modal and vast.ai SDKs, checked against the installed SDKs'
signatures: the class or function exists, it takes as many positional arguments as gpujob
passes, and every keyword gpujob passes is a parameter of it. An SDK upgrade that renames,
removes or newly requires something fails here, not on a user's first paid job.

The tables below are the list, written out by hand from runner/backends/modal/ and
runner/backends/vast/api.py; test_every_sdk_call_is_listed fails when gpujob starts calling
something the tables do not name."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import modal
import modal.config
import modal.exception
import modal.types
import pytest
from vastai import VastAI

RUNNER = Path(__file__).resolve().parents[1] / "runner"
MODAL_SOURCES = sorted((RUNNER / "backends" / "modal").glob("*.py"))
VAST_API = RUNNER / "backends" / "vast" / "api.py"


@dataclass(frozen=True)
class Call:
    """`owner.name(<positional> arguments, **{keywords})` as gpujob writes it. name None: owner
    itself is called (a class built, a function called). method: reached through an instance,
    so the class's function also takes self."""

    owner: object
    name: str | None
    positional: int = 0
    keywords: tuple[str, ...] = ()
    method: bool = False

    @property
    def label(self) -> str:
        owner = str(getattr(self.owner, "__qualname__", None) or getattr(self.owner, "__name__", self.owner))
        return f"{owner}.{self.name}" if self.name else owner


def _call_logs_manager() -> type:
    """The class of FunctionCall.logs (a property), as its annotation names it."""
    logs = inspect.getattr_static(modal.FunctionCall, "logs")
    assert isinstance(logs, property), "FunctionCall.logs is no longer a property"
    return typing.get_type_hints(logs.fget)["return"]


MODAL_CALLS = [
    # app.py: the image, the volume, the app and its function
    Call(modal.Image, "debian_slim", keywords=("python_version",)),
    Call(modal.Image, "uv_pip_install", keywords=("requirements",), method=True),
    Call(modal.Image, "add_local_python_source", positional=1, method=True),
    Call(modal.Image, "add_local_dir", positional=1, keywords=("remote_path",), method=True),
    Call(modal.Volume, "from_name", positional=1, keywords=("create_if_missing",)),
    Call(modal.Volume, "reload", method=True),
    Call(modal.Volume, "commit", method=True),
    Call(modal, "App", positional=1),
    Call(modal, "Retries", keywords=("max_retries", "backoff_coefficient", "initial_delay")),
    Call(modal.App, "function", method=True,
         keywords=("image", "volumes", "timeout", "retries", "single_use_containers", "include_source", "name")),
    Call(modal, "is_local"),
    # backend.py: the per-job options of the call (ModalRequest.options)
    Call(modal.Function, "with_options", keywords=("gpu", "timeout", "retries", "scaledown_window", "secrets", "env"),
         method=True),
    # app.py: a chain's next call, spawned inside the container (chain.py); the same Function.spawn
    # row below, reached from there through the same with_options
    Call(modal.Secret, "from_dict", positional=1),  # the job's webhooks, a credential (issue 26)
    # service.py: starting, following, cancelling, logs, the volume's files
    Call(modal, "enable_output"),
    Call(modal.App, "run", keywords=("detach",), method=True),
    Call(modal.Function, "spawn", positional=3, method=True),
    Call(modal.FunctionCall, "from_id", positional=1),
    Call(modal.FunctionCall, "get", keywords=("timeout",), method=True),
    Call(modal.FunctionCall, "cancel", keywords=("terminate_containers",), method=True),
    Call(_call_logs_manager(), "stream", method=True),
    Call(_call_logs_manager(), "tail", positional=1, method=True),
    Call(modal.Volume, "listdir", positional=1, method=True),
    Call(modal.Volume, "iterdir", positional=1, keywords=("recursive",), method=True),
    Call(modal.Volume, "read_file", positional=1, method=True),
]

# What gpujob catches from modal.exception (service.py's modal_errors, service_errors, _wait).
MODAL_EXCEPTIONS = ("AuthError", "ConnectionError", "InternalError", "ServiceError", "ResourceExhaustedError",
                    "ClientClosed", "DataLossError", "Error", "OutputExpiredError", "InputCancellation",
                    "RemoteError", "FunctionTimeoutError", "InternalFailure", "NotFoundError")

# Attributes gpujob reads off what the SDK hands back: (class, attribute).
MODAL_FIELDS = [
    (modal.FunctionCall, "object_id"),
    (modal.FunctionCall, "logs"),
    (modal.types.FileEntry, "path"),
    (modal.types.FileEntry, "type"),
    (modal.types.FileEntry, "size"),
    (modal.types.FileEntry, "mtime"),
    (modal.types.LogEntry, "message"),
    (modal.types.FileEntryType, "FILE"),
    (modal.config, "config"),
    (modal.config, "user_config_path"),
]

# runner/backends/vast/request.py's instance_request: create_instance(id=offer_id, **request).
VAST_INSTANCE_KEYWORDS = ("image", "disk", "label", "env", "runtype", "onstart_cmd", "cancel_unavail", "bid_price")

VAST_CALLS = [
    Call(VastAI, None, keywords=("api_key", "quiet", "retry")),
    Call(VastAI, "search_offers", method=True, keywords=("query", "type", "order", "limit", "storage")),
    Call(VastAI, "show_ssh_keys", method=True),
    Call(VastAI, "create_instance", method=True, keywords=("id", *VAST_INSTANCE_KEYWORDS)),
    Call(VastAI, "show_instances", method=True),
    Call(VastAI, "show_instance", method=True, keywords=("id",)),
    Call(VastAI, "logs", positional=1, keywords=("tail",), method=True),
    Call(VastAI, "copy", positional=2, method=True),
    Call(VastAI, "stop_instance", method=True, keywords=("id",)),
    Call(VastAI, "destroy_instance", method=True, keywords=("id",)),
]


def check_call(call: Call) -> None:
    """The SDK's signature accepts the call as gpujob makes it (Signature.bind: the count of
    positional arguments, each keyword's name, and nothing required left out)."""
    target = getattr(call.owner, call.name) if call.name else call.owner
    assert callable(target), f"{call.label} is not callable"
    signature = inspect.signature(target)
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name == "cls":  # Modal's wrapped classmethods show cls; calls bind it
        signature = signature.replace(parameters=parameters[1:])
    positional = [object()] * (call.positional + (1 if call.method else 0))
    try:
        signature.bind(*positional, **{name: object() for name in call.keywords})
    except TypeError as err:
        raise AssertionError(f"{call.label}{signature} does not take gpujob's call: {err}") from None


@pytest.mark.parametrize("call", MODAL_CALLS + VAST_CALLS, ids=lambda call: call.label)
def test_sdk_takes_the_call_gpujob_makes(call):
    check_call(call)


@pytest.mark.parametrize("name", MODAL_EXCEPTIONS)
def test_modal_raises_what_gpujob_catches(name):
    cls = getattr(modal.exception, name, None)
    assert isinstance(cls, type) and issubclass(cls, BaseException), f"modal.exception.{name} is gone"


@pytest.mark.parametrize(("owner", "attribute"), MODAL_FIELDS, ids=lambda value: getattr(value, "__name__", value))
def test_modal_has_the_fields_gpujob_reads(owner, attribute):
    fields = getattr(owner, "__dataclass_fields__", {})
    assert attribute in fields or hasattr(owner, attribute), f"{owner.__name__}.{attribute} is gone"


def test_vast_client_keeps_its_timeout_where_gpujob_sets_it():
    """VastApi.connect sets `sdk.client.timeout`: the client must read it for every request."""
    sdk = VastAI(api_key="not-a-key", quiet=True, retry=1)  # builds a client; sends nothing
    assert sdk.client.timeout > 0
    assert "timeout" in inspect.signature(type(sdk.client)._request).parameters


def test_vast_instance_request_sends_only_listed_keywords():
    """What instance_request builds is exactly what the table checks against create_instance."""
    from runner.backends.vast.request import instance_request
    from runner.spec.model import JobSpec

    spec = JobSpec.model_validate({"name": "contract", "backend": "vast", "resources": {"gpu": "RTX4090:1"}})
    request = instance_request(spec, "contract-run", {"id": 1, "dph_total": 0.4, "min_bid": 0.2})
    assert set(request) == set(VAST_INSTANCE_KEYWORDS)


def _modal_names_used() -> set[str]:
    """`modal.X` and `modal.exception.X` as written in runner/backends/modal/ (also through
    `self.modal`, the imported module ModalService keeps)."""
    names = set()
    for source in MODAL_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "modal":
                names.add(node.attr)
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "modal" and isinstance(node.value.value, ast.Name)):
                names.add(node.attr)  # self.modal.X
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "exception"):
                names.add(f"exception.{node.attr}")
    return names


def test_every_sdk_call_is_listed():
    """A new modal.X or self.sdk.X in gpujob's code needs its row in the tables above."""
    listed_modal = {call.name for call in MODAL_CALLS if call.owner is modal}
    listed_modal |= {call.owner.__name__ for call in MODAL_CALLS if isinstance(call.owner, type)
                     and getattr(modal, call.owner.__name__, None) is call.owner}
    listed_modal |= {f"exception.{name}" for name in MODAL_EXCEPTIONS} | {"exception"}
    unlisted = _modal_names_used() - listed_modal
    assert not unlisted, f"modal names used but not in MODAL_CALLS/MODAL_EXCEPTIONS: {sorted(unlisted)}"

    used_vast = set(re.findall(r"self\.sdk\.(\w+)\(", VAST_API.read_text()))
    listed_vast = {call.name for call in VAST_CALLS if call.name}
    assert used_vast, "VastApi no longer calls self.sdk.X(...): update this test's scan"
    assert not used_vast - listed_vast, f"VastAI methods called but not in VAST_CALLS: {sorted(used_vast - listed_vast)}"


def test_nothing_reads_an_sdks_private_internals():
    """gpujob and its tests use the SDKs' public API only (issue 24): an SDK's private modules
    (modal._utils, ...) and private names (modal.mount._Mount) are not promised to stay, and a
    stand-in built on them tests gpujob against Modal's internals rather than its interface."""
    sdks = ("modal", "vastai", "vast")
    found = []
    for source in [*RUNNER.rglob("*.py"), *RUNNER.parent.joinpath("tests").glob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] in sdks and any(part.startswith("_") for part in parts[1:]):
                    found.append(f"{source.relative_to(RUNNER.parent)}:{node.lineno} {module}")
            if isinstance(node, ast.Attribute) and node.attr in ("_translate_in", "_translate_out", "_deps"):
                found.append(f"{source.relative_to(RUNNER.parent)}:{node.lineno} .{node.attr}")
    assert not found, "private SDK internals read:\n" + "\n".join(found)
