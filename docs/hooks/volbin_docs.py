"""MkDocs hook: the pages derived from the code and the README.

- ``index.md``: README.md, its links into ``docs/`` made relative to the site.
- ``cli.md``: ``volbin --help`` and every command's ``--help``, from ``volbin.cli.build_parser()``
  (a new command appears without touching the docs).
- ``api.md``: mkdocstrings directives for every public name in ``volbin.__all__``, then the
  modules in `MODULES` (their own ``__all__``).

The functions building the pages take no MkDocs object, so tests call them directly.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Width of the generated help text (argparse reads $COLUMNS).
HELP_COLUMNS = 100
#: Modules documented as a whole after the top-level names; public names defined in one of
#: them are documented there only.
MODULES = ("volbin.io",)
#: Names of ``volbin.__all__`` that are not documented objects.
SKIP_NAMES = ("__version__",)


@contextmanager
def _columns(n: int):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def commands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of every subcommand, in ``volbin --help`` order."""
    from volbin.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def cli_markdown() -> str:
    """The command-line reference: the top-level help, then one section per command."""
    from volbin.cli import build_parser

    with _columns(HELP_COLUMNS):
        out = [
            "# Command line\n",
            "Every command's `--help`, as the installed `volbin` prints it (this page is made "
            "from the parser when the site is built).\n",
            "## volbin\n",
            _fence(build_parser().format_help()),
        ]
        for name, summary, parser in commands():
            out.append(f"## volbin {name}\n")
            if summary:
                out.append(f"{summary[0].upper()}{summary[1:]}.\n")
            out.append(_fence(parser.format_help()))
    return "\n".join(out)


def _fence(text: str) -> str:
    return "````text\n" + text.rstrip() + "\n````\n"


def public_path(name: str, obj: Any) -> str:
    """The dotted path under which `obj` (``volbin.<name>``) is documented: its defining module
    without private trailing components (``volbin.io._read`` -> ``volbin.io``)."""
    module = getattr(obj, "__module__", None) or "volbin"
    parts = module.split(".")
    while len(parts) > 1 and parts[-1].startswith("_"):
        parts.pop()
    return ".".join([*parts, name])


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    return first


def api_entries() -> list[tuple[str, str, Any]]:
    """``(name, documented path, object)`` of every public name of ``volbin.__all__``."""
    import volbin

    return [
        (name, public_path(name, getattr(volbin, name)), getattr(volbin, name))
        for name in volbin.__all__
        if name not in SKIP_NAMES
    ]


def api_markdown() -> str:
    """The Python API reference: a table of the public names, then their docstrings."""
    entries = api_entries()
    kinds: dict[str, list[tuple[str, str, Any]]] = {"Functions": [], "Classes": [], "Errors and warnings": []}
    for entry in entries:
        obj = entry[2]
        if inspect.isclass(obj) and issubclass(obj, (Exception, Warning)):
            kinds["Errors and warnings"].append(entry)
        elif inspect.isclass(obj):
            kinds["Classes"].append(entry)
        else:
            kinds["Functions"].append(entry)
    out = [
        "# Python API\n",
        "Every name below is available as `volbin.NAME` (`import volbin` imports each on first "
        "use).  This page is made from the docstrings when the site is built.\n",
        "| name | what it is |",
        "|---|---|",
    ]
    out += [f"| [`volbin.{n}`](#{path}) | {_summary(obj)} |" for n, path, obj in entries]
    out.append("")
    in_modules = {path for _, path, _ in entries if path.rsplit(".", 1)[0] in MODULES}
    for title, group in kinds.items():
        shown = [(n, path) for n, path, _ in sorted(group) if path not in in_modules]
        if not shown:
            continue
        out.append(f"## {title}\n")
        out += [_directive(path) for _, path in shown]
    for module in MODULES:
        out.append(f"## `{module}`\n")
        out.append(_directive(module, members=True))
    return "\n".join(out)


def _directive(path: str, members: bool = False) -> str:
    """A mkdocstrings directive: one object with its heading, or a module's members without."""
    opts = ["::: " + path, "    options:", "      heading_level: 3"]
    if members:
        opts += ["      show_root_heading: false", "      show_root_toc_entry: false"]
    return "\n".join(opts) + "\n"


def readme_markdown() -> str:
    """README.md as the site's home page: links into ``docs/`` made relative to the site."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


#: Generated pages: site path -> function returning its Markdown.
PAGES = {"index.md": readme_markdown, "cli.md": cli_markdown, "api.md": api_markdown}


def on_config(config: Any) -> Any:
    """Document this tree's volbin, as mkdocstrings does (``paths: [.]``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=make()))
    return files
