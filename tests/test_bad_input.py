"""Bad input, everywhere a user can hand gpujob something: every malformed spec file and `--set`
value gets exit 2, a short message naming the file (and line) or the option, no traceback, and
nothing written. The committed corpus is tests/corpus/bad_specs/; files that cannot be committed
as text (binary, other encodings, huge) are written here, by GENERATED."""

import gzip
import random
from pathlib import Path

import pytest

from types import SimpleNamespace

from tests.conftest import REPO, cli, cli_subprocess

CORPUS = REPO / "tests" / "corpus" / "bad_specs"
SPEC_TIMEOUT_S = 60  # a refused spec is refused in well under a second; a hang fails the test instead

GENERATED = {
    # not text
    "binary-random.yaml": random.Random(0).randbytes(512),
    "binary-png.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)),
    "binary-gzip.yaml": gzip.compress(b"name: x\n", mtime=0),
    "binary-nul-in-text.yaml": b"name: x\n\x00train: {epochs: 1}\n",
    "binary-bom-then-bytes.yaml": b"\xef\xbb\xbf" + bytes(range(128, 256)),
    # text, but not UTF-8
    "encoding-latin1.yaml": "name: café\n".encode("latin-1"),
    "encoding-cp1252-quotes.yaml": "name: \u201cx\u201d\n".encode("cp1252"),
    "encoding-utf16-bom.yaml": "name: x\n".encode("utf-16"),
    "encoding-utf16-no-bom.yaml": "name: x\n".encode("utf-16-le"),
    "encoding-utf32.yaml": "name: x\n".encode("utf-32"),
    "encoding-overlong-slash.yaml": b"name: x\ndata:\n  root: \xc0\xaf\n",
    "encoding-surrogate-bytes.yaml": b"name: \xed\xa0\x80\n",
    "encoding-truncated.yaml": "name: x\ndata:\n  root: é".encode()[:-1],
    # characters YAML does not allow, or that hide
    "control-bell.yaml": b"name: x\x07\n",
    "control-terminal-escape.yaml": b"name: \x1b[31mred\x1b[0m\n",
    "control-zero-width-key.yaml": "na\u200bme: x\n".encode(),
    "control-rtl-override.yaml": "name: x\u202egpj\n".encode(),
    # too big to be a spec
    "huge-file.yaml": b"name: x\n" + b"# padding, padding, padding\n" * 12_000,
    "huge-scalar.yaml": b"name: " + b"a" * 50_000 + b"\n",
    "huge-scalar-in-args.yaml": b"name: x\nmodel:\n  args:\n    text: '" + b"z" * 100_000 + b"'\n",
    "huge-int.yaml": b"name: x\ntrain:\n  epochs: " + b"9" * 5000 + b"\n",
    "huge-flat-list.yaml": b"name: x\nmodel:\n  args:\n    l: [" + b"1," * 20_000 + b"1]\n",
    "huge-key.yaml": b"name: x\n" + b"k" * 9000 + b": 1\n",
    "huge-many-keys.yaml": b"name: x\nmodel:\n  args:\n" + b"".join(b"    k%d: %d\n" % (i, i) for i in range(12_000)),
    "deep-10000.yaml": b"name: x\nmodel:\n  args:\n    a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
    "deep-mappings-2000.yaml": b"name: x\nmodel:\n  args: " + b"{a: " * 2000 + b"1" + b"}" * 2000 + b"\n",
    # line endings do not hide a duplicate
    "crlf-duplicate.yaml": b"name: x\r\ntrain:\r\n  epochs: 1\r\n  epochs: 2\r\n",
}

COMMITTED = sorted(path.name for path in CORPUS.iterdir())


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generated_bad_specs")
    for name, data in GENERATED.items():
        (folder / name).write_bytes(data)
    return folder


def in_process(monkeypatch, cwd: Path, *args):
    """The CLI in this process (torch is imported once for the whole corpus, not per file), run
    from `cwd`; its outcome shaped like a subprocess's. An exception other than the CLI's own
    exit is a traceback the user would have seen."""
    monkeypatch.chdir(cwd)
    result = cli(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def assert_refused(out, named: str, runs: Path, cwd: Path) -> None:
    """Exit 2, at most 3 short lines naming `named`, no traceback, nothing written."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:], out.stdout[-2000:])
    assert "Traceback" not in out.stderr + out.stdout
    assert 1 <= len(lines) <= 3 and all(len(line) <= 600 for line in lines), out.stderr[:3000]
    assert named in out.stderr
    assert not runs.exists(), "a refused spec must not make a runs folder"
    assert list(cwd.iterdir()) == [], "a refused spec must write nothing"


def test_the_corpus_has_every_kind_of_bad_input():
    kinds = {name.split("-")[0] for name in COMMITTED + list(GENERATED)}
    assert kinds >= {"syntax", "top", "dup", "key", "alias", "deep", "tag", "type", "value", "field",
                     "binary", "encoding", "control", "huge"}
    assert len(COMMITTED) >= 80


@pytest.mark.parametrize("name", COMMITTED + sorted(GENERATED))
def test_a_bad_spec_is_refused_in_one_line(name, generated, tmp_path, monkeypatch):
    path = CORPUS / name if name in COMMITTED else generated / name
    before = path.read_bytes()
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    for command in (("validate", path), ("submit", path, "--dry-run", "--runs-dir", runs)):
        assert_refused(in_process(monkeypatch, cwd, *command), str(path), runs, cwd)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["binary-random.yaml", "alias-billion-laughs.yaml", "deep-10000.yaml",
                                  "huge-file.yaml", "tag-python-name.yaml"])
def test_a_bad_spec_is_refused_by_the_command_itself(name, generated, tmp_path):
    """A few of the corpus through `gpujob` as its own process: real exit code, real stderr."""
    path = CORPUS / name if (CORPUS / name).exists() else generated / name
    assert path.exists(), name
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    for command in (("validate", path), ("submit", path, "--dry-run", "--runs-dir", runs)):
        assert_refused(cli_subprocess(*command, timeout=SPEC_TIMEOUT_S, cwd=cwd), str(path), runs, cwd)


BAD_SETS = [
    "train.epochs=ten",
    "train.epochs=0",
    "train.epochs",  # no value
    "=1",
    "train..epochs=1",
    "name.x=1",  # name is a value, not a section
    "model=cnn",
    "resources=5",
    "slurm.partiton=gpu",
    "resources.gpu=4090",
    "backend=colab",
    "optimizer.lr=.inf",
    "train.seed=99999999999999999999999999",
    "model.args=&a [*a]",
    "model.args={a: 1, a: 2}",
    "model.args=!!python/object/apply:os.system [true]",
    "model.args=" + "[" * 100 + "]" * 100,
    ".".join(["a"] * 50) + "=1",
]


@pytest.mark.parametrize("item", BAD_SETS)
def test_a_bad_set_value_is_blamed_on_the_option(item, tmp_path, monkeypatch):
    spec = REPO / "jobs" / "quickstart.yaml"  # a good spec: only --set is wrong
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    for command in (("validate", spec), ("submit", spec, "--dry-run", "--runs-dir", runs)):
        out = in_process(monkeypatch, cwd, *command, "--set", item)
        assert_refused(out, "--set", runs, cwd)
        assert out.stderr.startswith("gpujob: --set ") and "quickstart.yaml" not in out.stderr


@pytest.mark.parametrize("kind", ["a folder", "a missing file", "an empty device", "an endless device"])
def test_a_path_that_is_no_spec_file_is_refused(kind, tmp_path):
    path = {"a folder": tmp_path, "a missing file": tmp_path / "nope.yaml",
            "an empty device": Path("/dev/null"), "an endless device": Path("/dev/zero")}[kind]
    if not path.exists() and kind.endswith("device"):
        pytest.skip(f"{path} does not exist here")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = cli_subprocess("validate", path, timeout=SPEC_TIMEOUT_S, cwd=cwd)
    assert_refused(out, str(path), tmp_path / "runs", cwd)


def test_a_failed_download_says_where_from_and_what_to_do(write_spec, tmp_path):
    # Every request goes to a proxy that refuses it: the download fails at once, with or without
    # internet here, and the subprocess timeout bounds the test if anything waits anyway.
    root = tmp_path / "data"
    spec = write_spec(data={"dataset": "fashion_mnist", "root": str(root), "download": True})
    no_network = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    out = cli_subprocess("run", spec, "--runs-dir", tmp_path / "runs", timeout=180,
                         env={**no_network, "no_proxy": "", "NO_PROXY": ""})
    message = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in message and len(message.splitlines()) == 1, message
    assert "data.download: downloading fashion_mnist from http://fashion-mnist.s3-website" in message
    assert "failed (" in message and "set data.download: true" not in message
    assert f"in {root.resolve() / 'FashionMNIST' / 'raw'}" in message  # the exact folder torchvision reads
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert list((tmp_path / "runs").iterdir()) == []  # the job never started: no run folder is left
