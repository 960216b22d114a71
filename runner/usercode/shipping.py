"""The user's own code that a job needs, found and sent with it.

A spec names code as `package.module:name` (model.name, data.dataset, train.step), and
`code.include` names more modules that code imports. Each top-level module is looked for where
a local run finds it: beside the spec, in the current directory, on PYTHONPATH. What is found
there travels with the job: the package's folder (or the module's one file), without caches
and hidden files, copied into the run folder's `job/code` when the job is submitted. Every
backend that runs the job elsewhere makes that copy importable (a Docker mount, SLURM's shared
file system, the Modal image, the vast.ai instance, the Kaggle bundle), so a run and its resume
use the code as it was when it was submitted. A module found only among installed packages
(torchvision, timm...) is the image's business, not shipped.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import bad_input

CODE_DIR = "code"  # in the run's job/ folder
SHIPPED_CODE = "GPUJOB_SHIPPED_CODE"  # where a backend put that copy for the job: imported first
SKIPPED_DIRS = {"__pycache__", "node_modules"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
IMPORT_CHECK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Module:
    name: str  # the top-level import name
    source: Path  # its package folder, or its .py file
    field: str  # the spec field that asked for it


@dataclass
class UserCode:
    modules: list[Module]
    files: list[tuple[Path, str]] = field(default_factory=list)  # (file here, path under job/code)
    imports: list[tuple[str, str]] = field(default_factory=list)  # (spec field, module to import)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path, _ in self.files)

    def describe(self) -> str:
        names = ", ".join(f"{m.name}/" if m.source.is_dir() else f"{m.name}.py" for m in self.modules)
        listed = ", ".join(rel for _, rel in self.files[:12]) + (", ..." if len(self.files) > 12 else "")
        return f"{names}: {len(self.files)} file(s), {_size(self.total_bytes)} ({listed})"

    def copy_into(self, folder: Path) -> Path:
        """The snapshot: every shipped file under `folder`/code. Returns that folder."""
        root = folder / CODE_DIR
        for path, rel in self.files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        return root

    def check_a_copy(self, python: str | None = None) -> None:
        """check_imports on a scratch copy, for a job not yet given a run folder (a dry run, an
        export): what the shipped copy would lack is said now."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpujob-code-") as scratch:
            check_imports(self, self.copy_into(Path(scratch)), python)


def code_fields(spec) -> list[tuple[str, str]]:
    """(spec field, package.module) for each piece of user code the spec names."""
    named = [("model.name", spec.model.name), ("data.dataset", spec.data.dataset)]
    if spec.train.step:
        named.append(("train.step", spec.train.step))
    found = [(where, value.partition(":")[0]) for where, value in named if ":" in value]
    return found + [("code.include", module) for module in spec.code.include]


def search_folders(spec_path: Path | str | None, cwd: Path | str | None = None) -> list[str]:
    from runner.usercode.imports import CODE_PATHS, code_paths_for

    folders = os.environ.get(CODE_PATHS, "").split(os.pathsep)
    if spec_path is not None:
        folders += code_paths_for(spec_path, cwd).split(os.pathsep)
    folders += os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return list(dict.fromkeys(f for f in folders if f))


def find_user_code(spec, spec_path: Path | str | None, cwd: Path | str | None = None) -> UserCode | None:
    """The code the spec needs that is not installed, and its files; None when it names none.
    A module that cannot be found anywhere, or code past code.max_mb, is the spec's error."""
    wanted = code_fields(spec)
    if not wanted:
        return None
    folders = search_folders(spec_path, cwd)
    modules: dict[str, Module] = {}
    for where, dotted in wanted:
        top = dotted.split(".")[0]
        if top in modules:
            continue
        found = importlib.machinery.PathFinder.find_spec(top, folders)
        if found is None:
            if importlib.util.find_spec(top) is not None:
                continue  # installed: the environment the job runs in must have it too
            raise bad_input(f"{where}: cannot find module {top} beside the spec, in the current directory or on "
                            f"PYTHONPATH (looked in {', '.join(folders)})")
        modules[top] = Module(top, _source_of(found), where)
    code = UserCode(list(modules.values()), imports=[(w, d) for w, d in wanted if d.split(".")[0] in modules])
    for module in code.modules:
        code.files += _files_of(module)
    _check_size(code, spec.code.max_mb)
    return code if code.modules else None


def _source_of(found) -> Path:
    if found.submodule_search_locations:  # a package (or a namespace package's first folder)
        return Path(list(found.submodule_search_locations)[0]).resolve()
    return Path(found.origin).resolve()


def _files_of(module: Module) -> list[tuple[Path, str]]:
    if module.source.is_file():
        return [(module.source, module.source.name)]
    files = []
    for root, dirs, names in os.walk(module.source):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith(SKIPPED_SUFFIXES):
                continue
            path = Path(root) / name
            if path.is_file():
                files.append((path, f"{module.name}/{path.relative_to(module.source).as_posix()}"))
    return files


def _check_size(code: UserCode, max_mb: float) -> None:
    total = code.total_bytes
    if total <= max_mb * 1e6:
        return
    path, rel = max(code.files, key=lambda f: f[0].stat().st_size)
    owner = next(m for m in code.modules if rel.split("/")[0] in (m.name, f"{m.name}.py"))
    raise bad_input(f"code.max_mb: the code to ship ({', '.join(m.name for m in code.modules)}) is "
                    f"{_size(total)}, past {max_mb:g} MB; the largest file is {path} ({_size(path.stat().st_size)}). "
                    f"Keep data out of the package ({owner.field} names it; data.root is for data), or raise "
                    "code.max_mb")


def check_imports(code: UserCode, code_root: Path, python: str | None = None) -> None:
    """Import every module the spec names from `code_root` alone, in a fresh interpreter (the
    one the job's machine runs, where it can be run from here): what the shipped copy lacks is
    found now, not after a queue or a rental."""
    modules = list(dict.fromkeys(module for _, module in code.imports))
    program = ("import importlib, sys\n"
               f"sys.path.insert(0, {str(code_root)!r})\n"
               f"for name in {modules!r}:\n"
               "    try:\n"
               "        importlib.import_module(name)\n"
               "    except BaseException as err:\n"
               "        print(name, type(err).__name__, str(err).splitlines()[0] if str(err) else '', sep='\\t')\n"
               "        sys.exit(1)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUJOB_CODE_PATHS")}
    try:
        done = subprocess.run([python or sys.executable, "-c", program], capture_output=True, text=True, env=env,
                              cwd=code_root, timeout=IMPORT_CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise bad_input(f"code: could not check that the shipped code imports ({err})") from None
    if done.returncode == 0:
        return
    name, kind, message = (done.stdout.strip().split("\t") + ["", "", ""])[:3]
    if not name:  # the interpreter itself failed
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise bad_input(f"code: the shipped code could not be checked ({python or sys.executable}: {last})")
    where = next((w for w, m in code.imports if m == name), "code.include")
    raise bad_input(f"{where}: {name} does not import from the code shipped with the job ({kind}: {message}); "
                    "add the modules it needs to code.include, or install them in the image")


def check_callables(spec) -> None:
    """Import what the spec's package.module paths name and check that each can be called the
    way the job calls it: the spec's error (exit 2, naming the field) before anything runs."""
    from runner.usercode.imports import check_signature, import_factory
    from runner.training.steps import step_for

    calls = [("model.name", spec.model.name, "model.args", {"num_classes": None, "input_shape": None,
                                                            **spec.model.args}),
             ("data.dataset", spec.data.dataset, "data.args", {"train": True, "root": spec.data.root, **spec.data.args})]
    for where, path, args_field, kwargs in calls:
        if ":" not in path:
            continue
        check_signature(import_factory(path, where), path, args_field, **kwargs)
    step_for(spec)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"
