"""The documentation's examples run as written, and the generated pages cover the code.

Every ``volbin ...`` command of the fenced ``bash`` blocks of README.md and docs/*.md runs
through `volbin.cli.main`, block by block, each block in a fresh folder and in order, so that
a line may read what a line above it wrote (a sidecar, a recipe, an output folder).  The files
a block reads but no line above writes are made first from the phantom, under the names the
docs use, by the role the command gives them (found with the command's own parser):

- images (``.nii``, ``.nii.gz``, ``.npy``, ``.zarr``): a small phantom; 4D when the line passes
  ``--volume-axis`` (volumes on that axis) or the name says a stack (``brains``, ``bold`` ...);
  a binary mask written by volbin with its sidecar for ``--mask`` and names with ``mask``
  (or ``m``); the phantom's labels for ``--labels`` and names with ``label`` or ``seg``;
- globs: a small BIDS-like tree that they match (``'data/sub-*/anat/*_T1w.nii.gz'`` gives
  ``data/sub-01/anat/sub-01_T1w.nii.gz`` and ``sub-02``, each with a BIDS ``.json``);
- folders (``name/``) that do not exist: two images inside;
- other files (``inputs.txt``): a list of two images;
- ``.json`` (a recipe or a sidecar): never made; a line above must write it.

Blocks that start a dask cluster of worker processes (seconds each) are marked slow.
Outputs are never made: writing one twice in a block fails as it would for a reader who
pastes the block.  A line is expected to exit 0 unless its comment says ``exit N``.  Lines
that cannot run on one machine are skipped by `SKIPS`, each shown as a skipped test.  Python
blocks run as scripts in a subprocess, with their inputs (string literals passed as the first
argument of a call, or by a keyword not starting with ``out``) made the same way.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import json
import os
import re
import shlex
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
#: The phantom of every input: small, with 0.25 mm voxels so that a printer export of it at
#: 600 x 300 dpi and 0.027 mm layers is a couple of hundred small layers.
SHAPE = (24, 28, 22)
ZOOMS = (0.25, 0.25, 0.25)
N_VOLUMES = 2
#: Names that stand for a 4D stack of volumes.
STACK_NAME = re.compile(r"(brains|bold|dwi|stack|series|4d)", re.IGNORECASE)
MASK_NAME = re.compile(r"(mask|^m$)", re.IGNORECASE)
LABEL_NAME = re.compile(r"(label|seg)", re.IGNORECASE)
GLOB_CHARS = re.compile(r"[*?\[]")
EXPECTED_EXIT = re.compile(r"\bexit(?: code)? (\d+)\b")

#: Lines that cannot run on one machine without a network: (pattern, why).  Keep it short:
#: everything else in the docs runs.
SKIPS = ((re.compile(r"--scheduler[ =]tcp://"), "needs a running dask scheduler at that address"),)
MAX_SKIPS = 2
MAX_SKIPPED_LINES = 4


class DocError(AssertionError):
    """An example cannot run as written."""


# --- finding the examples ----------------------------------------------------------------------
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file (also those indented in list items)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        yield Block(path, i + 1, m["info"].lower(), "\n".join(body) + "\n")
        i = j + 1


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in fenced_blocks(path)]


def split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of a shell line: ``#`` starting a word outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def split_commands(code: str) -> list[str]:
    """The commands of one shell line, split at ``&&``, ``||`` and ``;`` outside quotes."""
    parts, cur, quote, i = [], "", None, 0
    while i < len(code):
        ch = code[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif code.startswith(("&&", "||"), i) or ch == ";":
            parts.append(cur)
            cur = ""
            i += 1 if ch == ";" else 2
            continue
        cur += ch
        i += 1
    return [p.strip() for p in [*parts, cur] if p.strip()]


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    text: str
    argv: tuple[str, ...]
    stdout_to: str | None
    expected: int
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.block.path.relative_to(ROOT)}:{self.line}"


def commands(block: Block) -> list[Command]:
    """The ``volbin`` commands of a shell block, continuation lines joined."""
    out = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        code, comment = split_comment(text.strip())
        for cmd in split_commands(code):
            if not cmd.startswith("volbin "):
                continue
            out.append(_command(block, block.line + 1 + start, cmd, comment))
    return out


def _command(block: Block, line: int, cmd: str, comment: str) -> Command:
    where = f"{block.path.relative_to(ROOT)}:{line}"
    for word in shlex.split(cmd, posix=False):
        if GLOB_CHARS.search(word) and word[0] not in "'\"":
            raise DocError(f"{where}: quote the glob {word} (the shell would expand it): {cmd}")
    if "|" in shlex.split(cmd, posix=False):
        raise DocError(f"{where}: pipes are not run by the docs test: {cmd}")
    words = shlex.split(cmd)
    stdout_to = None
    if ">" in words:
        k = words.index(">")
        stdout_to = words[k + 1]
        words = words[:k] + words[k + 2 :]
    m = EXPECTED_EXIT.search(comment)
    skip = next((why for pattern, why in SKIPS if pattern.search(cmd)), None)
    return Command(block, line, cmd, tuple(words[1:]), stdout_to, int(m[1]) if m else 0, skip)


def shell_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in ("bash", "sh", "shell", "console")]


def python_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in ("python", "py")]


# --- making the inputs ---------------------------------------------------------------------------
def _image_exts() -> tuple[str, ...]:
    from volbin.formats import IMAGE_EXTS

    return tuple(sorted(IMAGE_EXTS, key=len, reverse=True))


def path_like(value: str) -> bool:
    """A file or folder name: an image, a ``.json``/``.txt``/``.png``..., a folder or a glob."""
    if not value or value[0] in "{[" or "://" in value or value.startswith("-"):
        return False
    return bool(
        value.endswith("/")
        or GLOB_CHARS.search(value)
        or value.endswith(_image_exts())
        or re.search(r"\.[A-Za-z]{2,4}$", value)
    )


def is_output(dest: str, help_text: str | None) -> bool:
    """An argument naming something the command writes (``output``, ``--out-dir``, ``--out``,
    ``--report``, ``--index``, ``--save-landmarks``)."""
    return (
        dest.startswith(("out", "save_"))
        or dest in ("report", "index")
        or (help_text or "").lower().startswith(("output", "write"))
    )


def _stem(name: str) -> str:
    base = Path(name.rstrip("/")).name
    for ext in _image_exts():
        if base.endswith(ext):
            return base[: -len(ext)]
    return Path(base).stem


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 10_000


def write_image(
    path: Path, *, role: str = "grey", volume_axis: int | None = None, stack: bool | None = None
) -> None:
    """A phantom image at `path` in the format its extension names."""
    import volbin

    path.parent.mkdir(parents=True, exist_ok=True)
    stack = bool(STACK_NAME.search(path.name)) if stack is None else stack
    four_d = role == "grey" and (volume_axis is not None or stack)
    ph = volbin.phantom(SHAPE, n_volumes=N_VOLUMES if four_d else None, seed=_seed(path.name), zooms=ZOOMS)
    if role == "mask":  # a mask as volbin writes it, with its sidecar
        grey = path.parent / f".{_stem(path.name)}-grey.nii.gz"
        nib.save(ph.to_nifti(), grey)
        volbin.save(volbin.binarize(volbin.load(grey), "otsu"), path)
        return
    data = ph.labels if role == "labels" else ph.intensity
    if path.name.endswith(".npy"):
        if four_d and volume_axis is not None:
            data = np.moveaxis(data, 3, volume_axis)
        np.save(path, data)
        return
    img = nib.Nifti1Image(data, ph.affine)
    img.header.set_xyzt_units("mm", "sec")
    if path.name.endswith((".nii", ".nii.gz")):
        nib.save(img, path)
        return
    tmp = path.parent / f".{_stem(path.name)}-source.nii.gz"
    nib.save(img, tmp)
    volbin.convert(tmp, path)
    tmp.unlink()


def _fill(component: str, i: int) -> str:
    """One name matching a glob's component: a leading ``*`` is a subject (``sub-01``), any other
    ``*`` a number."""
    out = re.sub(r"^\*", f"sub-{i:02d}", component)
    out = out.replace("*", f"{i:02d}").replace("?", str(i % 10))
    return re.sub(r"\[!?([^\]])[^\]]*\]", r"\1", out)


def make_tree(pattern: str, cwd: Path) -> None:
    """Two images (with BIDS sidecars under ``sub-*``) that `pattern` matches, unless it already
    matches something."""
    if glob.glob(pattern, root_dir=cwd, recursive=True):
        return
    made = []
    for i in (1, 2):
        parts = [_fill(c, i) for c in pattern.split("/") if c != "**"]
        name = "/".join(parts)
        if not name.endswith(_image_exts()):
            name += ".nii.gz"
        write_image(cwd / name)
        if "sub-" in name:
            (cwd / (_stem_path(name) + ".json")).write_text(
                json.dumps({"RepetitionTime": 2.3}), encoding="utf-8"
            )
        made.append(name)
    found = set(glob.glob(pattern, root_dir=cwd, recursive=True))
    if not set(made) <= found:
        raise DocError(f"cannot make files that {pattern!r} matches (made {made})")


def _stem_path(name: str) -> str:
    for ext in _image_exts():
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def make_input(value: str, dest: str, cwd: Path, *, volume_axis: int | None, labels: bool) -> None:
    """Make the input `value` (given to `dest`) in `cwd` if no earlier line wrote it."""
    path = cwd / value
    if GLOB_CHARS.search(value):
        make_tree(value, cwd)
    elif path.exists():
        return
    elif value.endswith("/"):
        for i in (1, 2):
            write_image(path / f"sub-{i:02d}_T1w.nii.gz")
    elif value.endswith(_image_exts()):
        stem = _stem(value)
        if dest == "mask" or MASK_NAME.search(stem):
            role = "mask"
        elif dest == "labels" or labels or LABEL_NAME.search(stem):
            role = "labels"
        else:
            role = "grey"
        write_image(path, role=role, volume_axis=volume_axis)
    elif value.endswith(".json"):
        raise DocError(f"{value} is read before a line above writes it (show where it comes from)")
    else:  # a list file
        folder = path.parent / f"{_stem(value)}_files"
        names = []
        for i in (1, 2):
            write_image(folder / f"{_stem(value)}-{i:02d}.nii.gz")
            names.append(os.path.relpath(folder / f"{_stem(value)}-{i:02d}.nii.gz", cwd))
        path.write_text("# made by tests/test_docs.py\n" + "\n".join(names) + "\n", encoding="utf-8")


def cli_inputs(argv: tuple[str, ...]) -> tuple[list[tuple[str, str]], dict[str, object]]:
    """``([(dest, value)], namespace)`` of the path arguments a command line reads."""
    import argparse

    from volbin.cli import build_parser
    from volbin.cli._common import UsageError

    parser = build_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ns = parser.parse_args(list(argv))
    except (UsageError, SystemExit):
        return [], {}  # the command reports it when it runs
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparser = sub.choices.get(getattr(ns, "command", None) or "")
    if subparser is None:
        return [], vars(ns)
    found = []
    for action in subparser._actions:
        if action.type is not None or action.choices is not None or action.nargs == 0:
            continue
        if is_output(action.dest, action.help):
            continue
        value = getattr(ns, action.dest, None)
        if value is None or value == action.default:
            continue
        if action.dest == "inputs" and getattr(ns, "out_dir", True) is None and len(value) > 1:
            value = value[:-1]  # ``IN OUT`` without --out-dir (volbin normalize): OUT is written
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and path_like(v):
                found.append((action.dest, v))
    return found, vars(ns)


def prepare_cli(cmd: Command, cwd: Path) -> None:
    inputs, ns = cli_inputs(cmd.argv)
    for dest, value in inputs:
        try:
            make_input(value, dest, cwd, volume_axis=ns.get("volume_axis"), labels=ns.get("labels") is True)
        except DocError as exc:
            raise DocError(f"{cmd.where}: {exc}: {cmd.text}") from None


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [v for e in node.elts for v in _literals(e)]
    return []


def python_inputs(code: str) -> list[tuple[str, str]]:
    """``(keyword or "", literal)`` of the path literals a script reads: the first argument of
    a call, or a keyword not starting with ``out``; literals it also writes are not inputs."""
    reads, writes = [], set()
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call):
            continue
        for k, arg in enumerate(node.args):
            for lit in _literals(arg):
                (reads.append(("", lit)) if k == 0 else writes.add(lit))
        for kw in node.keywords:
            for lit in _literals(kw.value):
                if kw.arg and is_output(kw.arg, None):
                    writes.add(lit)
                else:
                    reads.append((kw.arg or "", lit))
    return [(dest, v) for dest, v in dict.fromkeys(reads) if path_like(v) and v not in writes]


# --- the tests -----------------------------------------------------------------------------------
def starts_cluster(cmd: Command) -> bool:
    """The command starts a dask cluster of worker processes (seconds of start-up): it has a
    ``--scheduler`` option and is not told ``--scheduler threads`` (``normalize`` only with
    ``--out-dir``: one file runs in the calling process)."""
    if cmd.skip:
        return False
    _, ns = cli_inputs(cmd.argv)
    if ns.get("command") == "normalize" and ns.get("out_dir") is None:
        return False
    return "scheduler" in ns and ns["scheduler"] != "threads"


def python_starts_cluster(code: str) -> bool:
    """The script calls a ``volbin`` function that takes ``scheduler`` without
    ``scheduler="threads"``."""
    import inspect

    import volbin

    for node in ast.walk(ast.parse(code)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "volbin"):
            continue
        func = getattr(volbin, node.func.attr, None)
        if func is None or not callable(func):
            continue
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            continue
        given = {kw.arg: kw.value for kw in node.keywords}
        threads = isinstance(given.get("scheduler"), ast.Constant) and given["scheduler"].value == "threads"
        if "scheduler" in params and not threads:
            return True
    return False


def _params(blocks: list[Block], slow: list[bool]) -> list[object]:
    """Blocks as test parameters; those starting a dask cluster are marked slow."""
    return [
        pytest.param(b, id=b.where, marks=[pytest.mark.slow] if s else [])
        for b, s in zip(blocks, slow, strict=True)
    ]


SHELL_BLOCKS = [b for b in shell_blocks() if commands(b)]
PYTHON_BLOCKS = python_blocks()
SKIPPED = [c for b in SHELL_BLOCKS for c in commands(b) if c.skip]
SHELL_PARAMS = _params(SHELL_BLOCKS, [any(starts_cluster(c) for c in commands(b)) for b in SHELL_BLOCKS])
PYTHON_PARAMS = _params(PYTHON_BLOCKS, [python_starts_cluster(b.text) for b in PYTHON_BLOCKS])


def test_examples_are_found() -> None:
    """The parser sees the README's commands (a broken parser would run nothing)."""
    readme = [c.argv[0] for b in SHELL_BLOCKS if b.path.name == "README.md" for c in commands(b)]
    assert {"demo", "info", "binarize", "batch", "convert", "export-slices"} <= set(readme)
    assert any(b.path.name == "README.md" for b in PYTHON_BLOCKS)


def test_skip_list_is_short_and_used() -> None:
    assert len(SKIPS) <= MAX_SKIPS
    assert len(SKIPPED) <= MAX_SKIPPED_LINES, [c.where for c in SKIPPED]
    for pattern, why in SKIPS:
        assert any(pattern.search(c.text) for c in SKIPPED), f"unused skip {pattern.pattern!r} ({why})"


@pytest.mark.parametrize("cmd", SKIPPED, ids=[c.where for c in SKIPPED])
def test_skipped_example(cmd: Command) -> None:
    pytest.skip(f"{cmd.skip}: {cmd.text}")


def run_cli(cmd: Command, cwd: Path) -> tuple[int, str, str]:
    from volbin.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(cmd.argv))
    finally:
        os.chdir(old)
    if cmd.stdout_to:
        (cwd / cmd.stdout_to).write_text(out.getvalue(), encoding="utf-8")
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("block", SHELL_PARAMS)
def test_shell_example(block: Block, tmp_path: Path) -> None:
    ran = 0
    for cmd in commands(block):
        if cmd.skip:
            continue
        prepare_cli(cmd, tmp_path)
        rc, out, err = run_cli(cmd, tmp_path)
        assert rc == cmd.expected, (
            f"{cmd.where}: `{cmd.text}` exited {rc}, expected {cmd.expected}\n"
            f"stdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
        )
        ran += 1
    if not ran:
        pytest.skip(f"{block.where}: every line is skipped")


@pytest.mark.parametrize("block", PYTHON_PARAMS)
def test_python_example(block: Block, tmp_path: Path) -> None:
    for dest, value in python_inputs(block.text):
        try:
            make_input(value, dest, tmp_path, volume_axis=None, labels=False)
        except DocError as exc:
            raise DocError(f"{block.where}: {exc}") from None
    script = tmp_path / "example.py"
    script.write_text(block.text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"{block.where}: the example exited {proc.returncode}\n{block.text}\n"
        f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )


# --- the generated pages, the pictures, the site's pages ----------------------------------------
def _load_script(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HOOK = _load_script(ROOT / "docs" / "hooks" / "volbin_docs.py", "volbin_docs_hook")


def test_cli_page_holds_every_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's ``--help`` as `main` prints it is on the page, under its own heading."""
    from volbin.cli import main

    page = HOOK.cli_markdown()
    names = [name for name, _, _ in HOOK.commands()]
    assert {"binarize", "batch", "info"} <= set(names)
    with HOOK._columns(HOOK.HELP_COLUMNS):
        for argv in ([], *([name] for name in names)):
            assert main([*argv, "--help"]) == 0
            printed = capsys.readouterr().out
            assert printed.strip() and printed.rstrip() in page, argv
    headings = re.findall(r"^## volbin (\S+)$", page, flags=re.MULTILINE)
    assert headings == names


def test_api_page_documents_every_public_name() -> None:
    import importlib

    import volbin

    page = HOOK.api_markdown()
    directives = re.findall(r"^::: (\S+)$", page, flags=re.MULTILINE)
    assert "volbin.recipe.Recipe" in directives and "volbin.io" in directives
    for name in volbin.__all__:
        if name in HOOK.SKIP_NAMES:
            assert name.startswith("__")
            continue
        documented = [d for d in directives if d.rsplit(".", 1)[-1] == name]
        in_module = [m for m in HOOK.MODULES if name in getattr(importlib.import_module(m), "__all__", ())]
        assert documented or in_module, name
        for path in documented:
            module, attr = path.rsplit(".", 1)
            assert getattr(importlib.import_module(module), attr) is getattr(volbin, name), path
        assert f"[`volbin.{name}`]" in page


def test_home_page_is_the_readme_with_site_links() -> None:
    page = HOOK.readme_markdown()
    assert page.splitlines()[0] == (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[0]
    assert "](docs/" not in page and "](methods.md)" in page


FIGURES_SCRIPT = ROOT / "scripts" / "make_figures.py"
IMAGE_REF = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_docs_show_exactly_the_pictures_the_script_makes() -> None:
    figures = _load_script(FIGURES_SCRIPT, "volbin_make_figures")
    shown = {ref for path in DOC_FILES for ref in IMAGE_REF.findall(path.read_text(encoding="utf-8"))}
    shown = {ref.removeprefix("docs/") for ref in shown}
    assert shown == {f"img/{name}" for name in figures.FIGURES}
    on_disk = {f"img/{p.name}" for p in (ROOT / "docs" / "img").iterdir()}
    assert on_disk == shown, "pictures in docs/img that no page shows, or missing ones"


@pytest.mark.slow
def test_pictures_are_deterministic(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, str(FIGURES_SCRIPT), "--out", str(tmp_path / run)],
            check=True,
            env=env,
            timeout=900,
        )
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (ROOT / "docs" / "img").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    if isinstance(nav, list):
        return [p for v in nav for p in _nav_pages(v)]
    return []


def test_site_navigation_holds_every_page() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = _nav_pages(config["nav"])
    assert len(pages) == len(set(pages))
    assert set(pages) == {p.name for p in (ROOT / "docs").glob("*.md")} | set(HOOK.PAGES)
    assert config["theme"]["font"] is False  # no web fonts


LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s#]+)(#[^)\s]*)?\)")


def test_relative_links_resolve() -> None:
    """Links between pages point at files (README: in the repository; docs: in docs/ or a page
    the site makes)."""
    for path in DOC_FILES:
        for target, _ in LINK.findall(path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if path.parent == ROOT / "docs" and target in HOOK.PAGES:
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_json_examples_parse() -> None:
    blocks = [b for b in all_blocks() if b.lang == "json"]
    assert blocks
    for b in blocks:
        json.loads(b.text)


# --- the example runner itself ------------------------------------------------------------------
def _block(text: str, lang: str = "bash") -> Block:
    return Block(ROOT / "README.md", 1, lang, text)


def test_commands_are_split_and_commented() -> None:
    block = _block(
        "pip install -e . && volbin demo   # install, then the demo\n"
        "volbin info 'a b.nii.gz' --json > info.json\n"
        "volbin binarize x.nii.gz y.nii.gz \\\n    --method otsu --seed 3   # exit 2: not used\n"
        "echo '#' && volbin batch 'sub-*/*.nii.gz' -o out/ --scheduler tcp://h:8786\n"
    )
    got = [(c.line, c.argv, c.stdout_to, c.expected, c.skip is not None) for c in commands(block)]
    assert got == [
        (2, ("demo",), None, 0, False),
        (3, ("info", "a b.nii.gz", "--json"), "info.json", 0, False),
        (4, ("binarize", "x.nii.gz", "y.nii.gz", "--method", "otsu", "--seed", "3"), None, 2, False),
        (6, ("batch", "sub-*/*.nii.gz", "-o", "out/", "--scheduler", "tcp://h:8786"), None, 0, True),
    ]
    with pytest.raises(DocError, match="quote the glob"):
        commands(_block("volbin batch data/*.nii.gz --out-dir m/\n"))


def test_fenced_blocks_inside_lists() -> None:
    path = ROOT / "docs" / "cluster.md"
    yaml_blocks = [b for b in fenced_blocks(path) if b.lang == "yaml"]
    assert yaml_blocks and yaml_blocks[0].text.startswith("distributed:\n")


def test_inputs_and_outputs_come_from_the_parser() -> None:
    inputs, ns = cli_inputs(
        ("preview", "t1.nii.gz", "--mask", "m.nii.gz", "--out", "p.png", "--slices", "4", "--axis", "z")
    )
    assert inputs == [("input", "t1.nii.gz"), ("mask", "m.nii.gz")] and ns["slices"] == 4
    inputs, _ = cli_inputs(("binarize", "a.npy", "b.npy", "--recipe", "a.json", "--kernel", "stucki"))
    assert inputs == [("input", "a.npy"), ("recipe", "a.json")]
    inputs, _ = cli_inputs(
        ("batch", "list.txt", "dir/", "--out-dir", "o/", "--report", "r.json", "--index", "o/i.html")
    )
    assert inputs == [("inputs", "list.txt"), ("inputs", "dir/")]
    inputs, _ = cli_inputs(
        (
            "normalize",
            "a.nii.gz",
            "b.nii.gz",
            "--out-dir",
            "n/",
            "--method",
            "nyul",
            "--save-landmarks",
            "n.json",
        )
    )
    assert inputs == [("inputs", "a.nii.gz"), ("inputs", "b.nii.gz")]
    inputs, _ = cli_inputs(("normalize", "a.nii.gz", "a_z.nii.gz", "--method", "zscore"))
    assert inputs == [("inputs", "a.nii.gz")]
    inputs, _ = cli_inputs(("normalize", "a.nii.gz", "b.nii.gz", "--method", "match", "--reference", "r.nii"))
    assert inputs == [("inputs", "a.nii.gz"), ("reference", "r.nii")]
    inputs, _ = cli_inputs(
        ("normalize", "a.nii", "b.nii", "-o", "n/", "--method", "nyul", "--save-landmarks", "l.json")
    )
    assert inputs == [("inputs", "a.nii"), ("inputs", "b.nii")]
    assert python_inputs(
        'import volbin\nv = volbin.load("in.nii.gz")\nvolbin.save(v, "out.nii.gz")\n'
        'volbin.preview("out.nii.gz", mask="m.nii.gz", out="p.png")\n'
        'volbin.batch(["a.npy", "b.zarr"], "o/")\n'
    ) == [("", "in.nii.gz"), ("mask", "m.nii.gz"), ("", "a.npy"), ("", "b.zarr")]


def test_inputs_are_made_as_their_role_says(tmp_path: Path) -> None:
    import volbin

    make_input("data/sub-*/anat/*_T1w.nii.gz", "inputs", tmp_path, volume_axis=None, labels=False)
    assert sorted(glob.glob("data/**/*", root_dir=tmp_path, recursive=True)) == [
        "data/sub-01",
        "data/sub-01/anat",
        "data/sub-01/anat/sub-01_T1w.json",
        "data/sub-01/anat/sub-01_T1w.nii.gz",
        "data/sub-02",
        "data/sub-02/anat",
        "data/sub-02/anat/sub-02_T1w.json",
        "data/sub-02/anat/sub-02_T1w.nii.gz",
    ]
    make_input("stack.npy", "input", tmp_path, volume_axis=0, labels=False)
    assert np.load(tmp_path / "stack.npy").shape == (N_VOLUMES, *SHAPE)
    make_input("brains.nii.gz", "input", tmp_path, volume_axis=None, labels=False)
    assert volbin.load(tmp_path / "brains.nii.gz").shape == (*SHAPE, N_VOLUMES)
    make_input("brain.zarr", "input", tmp_path, volume_axis=None, labels=False)
    assert volbin.load(tmp_path / "brain.zarr").shape == SHAPE
    make_input("m.nii.gz", "mask", tmp_path, volume_axis=None, labels=False)
    mask = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    assert set(np.unique(mask)) == {0, 1} and volbin.read_sidecar(tmp_path / "m.nii.gz")["steps"]
    make_input("seg.nii.gz", "input", tmp_path, volume_axis=None, labels=False)
    assert np.array_equal(
        np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj),
        volbin.phantom(SHAPE, seed=_seed("seg.nii.gz")).labels,
    )
    make_input("inputs.txt", "inputs", tmp_path, volume_axis=None, labels=False)
    listed = [ln for ln in (tmp_path / "inputs.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(listed) == 2 and all((tmp_path / p).is_file() for p in listed)
    with pytest.raises(DocError, match="before a line above writes it"):
        make_input("recipe.json", "recipe", tmp_path, volume_axis=None, labels=False)


def test_a_block_writing_an_output_twice_fails(tmp_path: Path) -> None:
    block = _block(
        "volbin binarize brain.nii.gz mask.nii.gz\nvolbin binarize brain.nii.gz mask.nii.gz --method li\n"
    )
    with pytest.raises(AssertionError, match=r"README.md:3: .* exited 1, expected 0"):
        test_shell_example(block, tmp_path)
