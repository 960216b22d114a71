"""Importing the user's own code a spec names (`package.module:name`): found in the spec's folder,
the current folder, the code shipped with the job, or on sys.path; a module that cannot be
imported, or a factory whose signature does not take what gpujob passes, is one line naming the
spec field."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from runner.errors import bad_input


def call_factory(factory, path: str, args_field: str, **kwargs):
    """factory(**kwargs), after checking that its signature takes them."""
    check_signature(factory, path, args_field, **kwargs)
    return factory(**kwargs)


def check_signature(factory, path: str, args_field: str, **kwargs) -> None:
    """Whether factory(**kwargs) can be called: a mismatch is the spec's (one line naming the
    fields), not a traceback from inside the user's code."""
    import inspect

    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise bad_input(f"{args_field}: {path} cannot be called with {', '.join(kwargs)} ({err})") from None
    except ValueError:
        pass  # no signature to read (a builtin): let the call tell


CODE_PATHS = "GPUJOB_CODE_PATHS"  # where a spec's package.module:factory is looked for, besides sys.path


def code_paths_for(spec_file: Path | str, cwd: Path | str | None = None) -> str:
    """The one rule on every backend: the spec's folder and the current directory are importable."""
    folders = [str(Path(spec_file).resolve().parent), str(Path(cwd or Path.cwd()).resolve())]
    return os.pathsep.join(dict.fromkeys(folders))


def import_factory(path: str, field: str):
    import sys

    for folder in reversed(os.environ.get(CODE_PATHS, "").split(os.pathsep)):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise bad_input(f"{field}: cannot import {module_name} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise bad_input(f"{field}: {module_name} has no callable {attr}")
    return factory
