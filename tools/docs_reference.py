"""The documentation site's generated reference pages: each package's command line from its
argparse parsers and its Python API as mkdocstrings blocks over the names of its ``__all__``.

Nothing here is committed as Markdown: ``tools/docs_site.py build`` writes these pages into the
site's source folder on every build, so they follow the code.
"""

from __future__ import annotations

import argparse
import ast
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Package folder -> (import name, the function that returns its parsers as (command, parser)).
# semanir's top level is a hand-written dispatcher (``--help`` must not import torch); its
# subcommands' parsers are in ``semanir.commands.SUBCOMMANDS``, and ``fit``/``validate`` are
# LightningCLI (jsonargparse), documented by its training guide instead.
IMPORT_NAMES = {
    "common-kernels": "common_kernels",
    "semanir": "semanir",
    "itaclip": "itaclip",
    "pixelsmith": "pixelsmith",
    "diffeat": "diffeat",
    "vitron": "vitron",
}


@dataclass(frozen=True)
class Command:
    """One command of a program: its words (``["semanir", "restore"]``) and its parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)


def _subcommands(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[Command]:
    """``parser`` and every parser below it, depth first, in the order they were added."""
    yield Command(words, parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias names the same parser again
                    continue
                seen.add(id(sub))
                yield from _subcommands(sub, (*words, name))


def _semanir_commands() -> list[Command]:
    from semanir.commands import SUBCOMMANDS

    found = []
    for name, (make_parser, _run) in SUBCOMMANDS.items():
        found += _subcommands(make_parser(), ("semanir", name))
    return found


def _build_parser_commands(package: str) -> Callable[[], list[Command]]:
    def commands() -> list[Command]:
        module = importlib.import_module(f"{IMPORT_NAMES[package]}.cli")
        return list(_subcommands(module.build_parser(), (package,)))

    return commands


COMMANDS: dict[str, Callable[[], list[Command]]] = {
    "semanir": _semanir_commands,
    **{p: _build_parser_commands(p) for p in ("itaclip", "pixelsmith", "diffeat", "vitron")},
}
# What the CLI reference says about commands whose parser is not argparse's.
SEARCH_BOOST = 4
NOT_ARGPARSE = {
    "semanir": (
        "`semanir fit` and `semanir validate` are LightningCLI commands (jsonargparse): "
        "`semanir fit --help` lists their options, which are the fields of the model, data and "
        "trainer configurations; the [training guide](training.md) and the "
        "[named configs](guide.md) explain them."
    ),
}


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments ``parser --help`` shows: every action but help, subcommand lists and
    suppressed ones."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
    ]


def _cell(text: str) -> str:
    """Text for one Markdown table cell: lines joined, pipes escaped outside code spans (inside
    them Python-Markdown's tables keep a pipe as it is, and would show the backslash)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _code(text: str) -> str:
    """Inline code whatever backticks ``text`` holds."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return ""  # a switch: its default is its absence
    if action.default is None or action.default == argparse.SUPPRESS or action.default == []:
        return ""
    if action.default == "":
        return '`""`'
    return _code(str(action.default).replace("\n", "\\n"))  # one table row: newlines as \n


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and not isinstance(action.choices, range):
        return " \\| ".join(_code(str(c)) for c in action.choices)
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.nargs in ("*", "+"):
        metavar = f"{metavar}..."
    elif action.nargs == "?":
        metavar = f"[{metavar}]"
    return _code(str(metavar))


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return _cell(parser._get_formatter()._expand_help(action))


def command_markdown(command: Command) -> str:
    """One command's section: usage, description, one table row per argument."""
    parser = command.parser
    lines = [f"## {command.name}", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines += ["```text", usage, "```", ""]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        names = ", ".join(f"[`{command.name} {n}`](#{anchor((*command.words, n))})"
                          for n in dict.fromkeys(action.choices))  # fmt: skip
        lines += [f"Commands: {names}.", ""]
    actions = documented_actions(parser)
    if actions:
        lines += ["| argument | value | default | what it does |", "|---|---|---|---|"]
        for action in actions:
            flags = ", ".join(_code(s) for s in action.option_strings) or _code(action.dest)
            row = (flags, _value(action), _default(action), _help(parser, action))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def anchor(words: tuple[str, ...]) -> str:
    """The anchor MkDocs gives the heading ``## <words>`` (toc's slugify: lower case, spaces
    and runs of dashes to one dash)."""
    return "-".join(words).lower()


def cli_reference(package: str) -> str | None:
    """The package's CLI reference page, or None for a package without a command."""
    if package not in COMMANDS:
        return None
    commands = COMMANDS[package]()
    lines = [
        # Material's search ranks this page above the guides that mention a flag in passing:
        # a search for a flag's name ("tile" for --tile) lands on its row here first.
        "---",
        "search:",
        f"  boost: {SEARCH_BOOST}",
        "---",
        "",
        f"# {package}: CLI reference",
        "",
        f"Generated from `{package}`'s argparse parsers when the site is built; `{package} "
        "COMMAND --help` prints the same. A bad value is one line "
        f"`{package} COMMAND: error: FLAG: ...` and exit status 2, before any model loads.",
        "",
    ]
    if package in NOT_ARGPARSE:
        lines += [NOT_ARGPARSE[package], ""]
    lines += [command_markdown(command) for command in commands]
    return "\n".join(lines)


def public_names(package: str) -> list[str]:
    """The names of ``__all__`` in the package's ``__init__.py`` (read without importing it),
    ``__version__`` left out."""
    init = ROOT / "packages" / package / "src" / IMPORT_NAMES[package] / "__init__.py"
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            return [n for n in names if n != "__version__"]
    raise ValueError(f"{init}: no __all__")


def api_reference(package: str) -> str:
    """The package's API reference page: one mkdocstrings block per public name, so the site
    shows exactly what ``from <package> import *`` gives, in ``__all__``'s order."""
    module = IMPORT_NAMES[package]
    lines = [
        f"# {package}: API reference",
        "",
        f"Every name of `{module}.__all__`, from its docstring (Google style), generated when the "
        "site is built.",
        "",
    ]
    if (ROOT / "packages" / package / "docs" / "api.md").is_file():
        lines[-2] += " The [Python API page](api.md) explains how the names fit together."
    for name in public_names(package):
        lines += [f"::: {module}.{name}", ""]
    return "\n".join(lines)
