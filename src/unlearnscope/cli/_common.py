"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import sequence_limit
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.models import load_model
from unlearnscope.runs import output_folder_problem


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (sizes, counts, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
    return value


def output_folder(text: str) -> str:
    """An argparse type: a folder that exists or can be made, and can be written to, checked
    before the command loads anything."""
    problem = output_folder_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--model", required=required,
                        help="local folder, .gguf file, 'smollm2-135m', a hub model "
                             "(org/name from the local Hugging Face cache, hub:org/name to "
                             "download it) or 'tiny' for finetune")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bfloat16 on GPUs, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model folder or hub")


def load_args_model(args: argparse.Namespace):
    """(model, tokenizer) of `--model` with the command's model options. A `--max-length` over
    the model's positions is refused here, before the command writes anything."""
    model, tokenizer = load_model(args.model, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    check_max_length(args, tokenizer, model)
    return model, tokenizer


def check_max_length(args: argparse.Namespace, tokenizer, model) -> None:
    """Refuse a `--max-length` (when the command has one) over the model's positions."""
    sequence_limit(tokenizer, model, getattr(args, "max_length", None), option="--max-length")


def add_data_args(parser: argparse.ArgumentParser, *, flag: str = "--data",
                  required: bool = True, max_samples_help: str | None = None) -> None:
    """`flag` (a dataset spec), `--data-dir` and `--max-samples` (added once per parser, with
    `max_samples_help`, default: the first N samples of `flag`; say which specs it cuts)."""
    parser.add_argument(flag, required=required,
                        help="dataset spec: tofu:<split>, synthetic:authors[/forget|/retain], "
                             "jsonl:<file>, movielens:<folder>?split=forget")
    if not any(a.dest == "data_dir" for a in parser._actions):
        parser.add_argument("--data-dir", default=None,
                            help="local TOFU folder (else $UNLEARNSCOPE_TOFU_DIR, else the hub)")
    if not any(a.dest == "max_samples" for a in parser._actions):
        parser.add_argument("--max-samples", type=positive_int, default=None,
                            help=max_samples_help or f"use only the first N samples of {flag}")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=output_folder, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (default: %(default)s)")


def samples_from(args: argparse.Namespace, spec: str):
    samples = load_samples(spec, data_dir=args.data_dir)
    if args.max_samples is not None:
        samples = samples[: args.max_samples]
    return samples


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every parsed option except the handler, for `config.json`."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def parse_value(text: str) -> Any:
    """A command-line option value: JSON when it parses (numbers, lists, true), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """`["beta=0.5", "retain_loss=kl"]` -> `{"beta": 0.5, "retain_loss": "kl"}`."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UnlearnscopeError(f"{flag} '{pair}': expected KEY=VALUE")
        options[key] = parse_value(text)
    return options


def named_key_values(pairs: list[str], names: list[str], flag: str,
                     what: str) -> dict[str, dict[str, Any]]:
    """`["mrd.k=50", "cud.similarity=jaccard"]` -> `{"mrd": {"k": 50}, "cud": {...}}`, one
    entry per name in `names` (each a `what`, e.g. a scorer of --scorers)."""
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise UnlearnscopeError(f"{flag} '{pair}': expected NAME.KEY=VALUE")
        if name not in options:
            raise UnlearnscopeError(f"{flag} '{pair}': {what} '{name}' is not one of "
                                    f"{', '.join(names)}")
        options[name][option] = parse_value(text)
    return options
