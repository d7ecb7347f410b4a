"""The `unlearnscope` command line: a thin layer over the Python API.

Each module in this package that defines `register(subparsers)` adds its subcommands; the
module sets `func` on each parser to the function that runs it with the parsed arguments.
`--threads N` goes before or after the command name (`unlearnscope --threads 1 score ...` or
`unlearnscope score ... --threads 1`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from unlearnscope import __version__
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.progress import quiet_transformers

THREADS_HELP = ("CPU threads for this process's torch ops (torch.set_num_threads). Default: "
                "torch's own, $OMP_NUM_THREADS when set, else one per physical core: all "
                "cores for one job. Two jobs side by side: --threads 1 each (README, 'Running "
                "on a small machine')")


def thread_count(text: str) -> int:
    """A `--threads` value: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 thread")
    return value


def _add_threads_to_commands(parser: argparse.ArgumentParser) -> None:
    """Accept `--threads` after every (sub)command name too; given there, it overrides the one
    before the name (SUPPRESS: not given leaves the main parser's value in place)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if "--threads" not in command._option_string_actions:
                    command.add_argument("--threads", type=thread_count, metavar="N",
                                         default=argparse.SUPPRESS, help=THREADS_HELP)
                _add_threads_to_commands(command)


def _shows_default(action: argparse.Action) -> bool:
    """Whether `action`'s help should name its default: an option whose default is a value
    (not None, a flag's False, an empty list or text, or suppressed)."""
    default = action.default
    return (bool(action.option_strings) and action.help is not argparse.SUPPRESS
            and default is not None and default is not argparse.SUPPRESS
            and not isinstance(default, bool) and default not in ([], ""))


def _add_defaults_to_help(parser: argparse.ArgumentParser) -> None:
    """Append `(default: VALUE)` to the help of every option, in every (sub)command, whose
    default is a value and whose help does not already name it (tests/test_cli_help.py checks
    that every option has help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_defaults_to_help(command)
        elif action.help and _shows_default(action) and "default" not in action.help:
            action.help = f"{action.help} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearnscope",
        description="Per-sample unlearning difficulty for language models.",
    )
    parser.add_argument("--version", action="version", version=f"unlearnscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N",
                        help=THREADS_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    _add_threads_to_commands(parser)
    _add_defaults_to_help(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("accelerate", "transformers", "datasets", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet_transformers()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except UnlearnscopeError as error:
        print(f"unlearnscope {args.command}: error: {error}", file=sys.stderr)
        return 2
