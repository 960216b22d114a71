"""The documentation's commands run as shown, so the docs cannot lie.

The convention (docs/development.md): every ```console block in README.md and docs/ is run, each
`$ ` line a command, unless the line before the block is `<!-- not run: REASON -->` (it needs an
engine, credentials, the network, a run made earlier, or it is the test suite itself). A command
in a run block starts with `gpujob` or `uv run gpujob` (anything else there fails this test: mark
the block); it exits 0 unless its comment starts with `exit N`. The commands of one block run in
order in one fresh folder holding the repository's `jobs/`, as a user in a checkout runs them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NOT_RUN = re.compile(r"^<!-- not run: \S.* -->$")
EXPECTED_EXIT = re.compile(r"#\s*exit (\d+)\b")
GPUJOB = re.compile(r"^(uv run (--frozen )?(--all-extras )?)?gpujob( |$)")


@dataclass(frozen=True)
class Block:
    where: str  # page:line of the block's first line
    name: str  # page#N, the page's Nth console block: the test's id (slow_tests.txt), steady while lines move
    commands: tuple[str, ...]
    marked_not_run: bool


def console_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() != "```console":
            index += 1
            continue
        before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
        commands = tuple(line[2:] for line in lines[index + 1:end] if line.startswith("$ "))
        page_name = page.relative_to(REPO)
        blocks.append(Block(f"{page_name}:{index + 1}", f"{page_name}#{len(blocks) + 1}", commands,
                            bool(NOT_RUN.match(before))))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in console_blocks(page)]


def unique_run_blocks() -> list[Block]:
    """The blocks to run, each text once (README.md and docs/getting-started.md share theirs)."""
    seen: dict[tuple[str, ...], Block] = {}
    for block in ALL_BLOCKS:
        if not block.marked_not_run and block.commands not in seen:
            seen[block.commands] = block
    return list(seen.values())


def expected_exit(command: str) -> int:
    comment = command.partition(" #")[2]
    found = EXPECTED_EXIT.match("#" + comment.strip()) if comment else None
    return int(found.group(1)) if found else 0


def argv(command: str) -> list[str]:
    """The command as this environment's gpujob console script runs it (what `uv run gpujob` starts)."""
    words = shlex.split(command, comments=True)
    while words[0] != "gpujob":
        words.pop(0)
    return [str(Path(sys.executable).with_name("gpujob")), *words[1:]]


def test_every_console_block_is_run_or_says_why_not():
    assert ALL_BLOCKS, "no console blocks found"
    for block in ALL_BLOCKS:
        if not block.marked_not_run:
            assert block.commands, f"{block.where}: a console block without a `$ ` command"
            strays = [c for c in block.commands if not GPUJOB.match(c)]
            assert not strays, (f"{block.where}: {strays[0]!r} is not a gpujob command; mark the block "
                                "`<!-- not run: REASON -->` if it cannot run offline here")
    assert len(unique_run_blocks()) >= 8, "the docs' offline commands are what keeps them true; most should run"


@pytest.mark.parametrize("block", unique_run_blocks(), ids=lambda block: block.name)
def test_documented_command_exits_as_shown(block: Block, tmp_path: Path):
    (tmp_path / "jobs").symlink_to(REPO / "jobs")
    for command in block.commands:
        done = subprocess.run(argv(command), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == expected_exit(command), (
            f"{block.where}: `{command}` exited {done.returncode}, the docs say {expected_exit(command)}\n"
            f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        assert "Traceback" not in done.stderr, f"{block.where}: `{command}` printed a traceback:\n{done.stderr}"


def test_the_spec_reference_names_every_field_of_the_schema():
    """docs/spec.md's reference is generated from the models (docs/hooks/spec_reference.py): every
    field `gpujob schema` knows is a row, with its description."""
    from runner.spec.model import JobSpec

    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        import spec_reference
    finally:
        sys.path.pop(0)
    schema = JobSpec.model_json_schema()
    page = spec_reference.reference(schema)

    def fields(properties: dict, prefix: str):
        for name, prop in properties.items():
            section = spec_reference.section_of(prop, schema["$defs"])
            if section is None:
                yield f"{prefix}{name}", prop
            else:
                yield from fields(section["properties"], f"{prefix}{name}.")

    rows = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| `")}
    for path, prop in fields(schema["properties"], ""):
        assert path in rows, f"{path} is missing from the generated spec reference"
        assert spec_reference.cell(prop.get("description", "")) in rows[path]
    assert "<!-- spec-reference -->" in (REPO / "docs" / "spec.md").read_text()


def test_the_readmes_links_into_the_docs_lead_to_pages():
    """mkdocs build --strict checks the links between pages; the README is outside the site."""
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links into docs/"
    for target in targets:
        assert (REPO / target).is_file(), f"README.md links to {target}, which is not there"


def test_every_command_of_the_cli_is_in_the_commands_tables():
    """A command added to the CLI without a row in docs/commands.md (and the README's table) fails here."""
    from typer.main import get_command

    from runner.cli.main import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    names = sorted(name for name, command in commands.items() if not command.hidden)  # `plan`: estimate's old name
    rows = "\n".join(line for line in (REPO / "docs" / "commands.md").read_text().splitlines() if line.startswith("| "))
    readme = (REPO / "README.md").read_text()
    readme_table = readme[readme.index("## Commands"):readme.index("## Backends")]
    for name in names:
        assert re.search(rf"`gpujob {name}\b", rows), f"gpujob {name} has no row in docs/commands.md"
        assert re.search(rf"`(gpujob )?{name}\b", readme_table), f"gpujob {name} is not in the README's commands table"


def test_every_exit_code_has_a_row_in_troubleshooting():
    """The exit codes are a contract (runner/errors.py): each has its meaning and fix on the page."""
    from runner import errors

    codes = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, int)}
    page = (REPO / "docs" / "troubleshooting.md").read_text()
    assert codes >= {1, 2, 3, 130, 143}
    for code in sorted(codes | {0}):
        assert re.search(rf"^\| {code} \| ", page, re.MULTILINE), f"exit code {code} has no row in docs/troubleshooting.md"


def test_every_option_of_every_command_is_on_the_commands_page():
    from typer.main import get_command

    from runner.cli.main import app

    page = (REPO / "docs" / "commands.md").read_text()
    missing = []

    def walk(command, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                walk(sub, f"{path} {name}")
        for param in getattr(command, "params", []):
            if type(param).__name__.endswith("Option") and not getattr(param, "hidden", False):
                missing.extend(f"{path} {opt}" for opt in param.opts
                               if opt.startswith("--") and opt != "--help" and opt not in page)

    walk(get_command(app), "gpujob")
    assert not missing, f"options not on docs/commands.md: {', '.join(missing)}"
