"""`--help` of every (sub)command: well-formed usage lines, every option explained with its
default, and `--max-samples` saying exactly which samples it cuts."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pandas as pd
import pytest

from unlearnscope.cli import build_parser, main
from unlearnscope.data import load_samples

QUERY = "n_authors=5&questions_per_author=3"  # 1 forget author: 3 forget, 12 retain samples
FORGET = f"synthetic:authors/forget?{QUERY}"
RETAIN = f"synthetic:authors/retain?{QUERY}"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("unlearnscope",)
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(name path, parser) of the main parser and every (sub)command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _commands(command, (*path, name))


COMMANDS = dict(_commands(build_parser()))
def _action(command: str, option: str) -> tuple[argparse.ArgumentParser, argparse.Action]:
    parser = COMMANDS[tuple(command.split())]
    return parser, parser._option_string_actions[option]


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_usage_line_starts_with_the_command_and_its_options(path):
    """`usage: unlearnscope circuits analyze [-h] ...`: the command's own name path, then its
    options (the custom two-line usage of `circuits` once leaked into its actions' usage)."""
    parser = COMMANDS[path]
    assert parser.prog == " ".join(path)
    usage = parser.format_usage()
    if path == ("unlearnscope", "circuits"):  # written by hand: the command and its actions
        assert usage.startswith("usage: unlearnscope circuits --model M --data D --out DIR")
        return
    assert usage.startswith(f"usage: {' '.join(path)} [-h]"), usage


def test_circuits_analyze_usage():
    usage = COMMANDS[("unlearnscope", "circuits", "analyze")].format_usage()
    assert usage.splitlines()[0].startswith("usage: unlearnscope circuits analyze [-h] ")
    assert "[options]" not in usage and "{analyze,export}" not in usage


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_has_help_that_names_a_set_default(path):
    """Every option is explained; one with a default value (not None, a flag's False, an
    empty list or text) shows it in its help."""
    parser = COMMANDS[path]
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        option, default = action.option_strings[-1], action.default
        if not action.help:
            problems.append(f"{option}: no help")
            continue
        shown = formatter._expand_help(action)
        if default is not None and default is not argparse.SUPPRESS \
                and not isinstance(default, bool) and default not in ([], "") \
                and not ("default" in shown and str(default) in shown):
            problems.append(f"{option}: default {default!r} not shown in '{shown}'")
    assert not problems, f"{' '.join(path)}: " + "; ".join(problems)


@pytest.mark.parametrize(("command", "option", "default"), [
    ("unlearnscope unlearn", "--seed", "0"), ("unlearnscope unlearn", "--epochs", "10"),
    ("unlearnscope unlearn", "--lr", "1e-05"), ("unlearnscope unlearn", "--batch-size", "4"),
    ("unlearnscope unlearn", "--grad-accum", "4"),
    ("unlearnscope unlearn", "--warmup-epochs", "1.0"),
    ("unlearnscope demo", "--seed", "0"), ("unlearnscope demo", "--lr", "0.003"),
    ("unlearnscope demo", "--unlearn-epochs", "3"),
    ("unlearnscope circuits analyze", "--seed", "0"),
    ("unlearnscope validate", "--seed", "0"), ("unlearnscope anchors", "--seed", "0"),
    ("unlearnscope finetune", "--warmup-ratio", "0.1"),
])
def test_training_options_show_their_defaults(command, option, default):
    parser, action = _action(command, option)
    assert f"(default: {default})" in parser._get_formatter()._expand_help(action)


class Captured(Exception):
    """Raised by a stand-in for the work a command does, carrying the samples it was given."""


def _stop_with(*names: str):
    """A stand-in that raises `Captured` with the sample lists among its arguments, named."""
    def stand_in(*args, **kwargs):
        lists = [a for a in (*args, *kwargs.values())
                 if isinstance(a, list) and a and hasattr(a[0], "question")]
        raise Captured(dict(zip(names, lists, strict=True)))
    return stand_in


def _fake_model(*args, **kwargs):
    return object(), object()


def _run_until_captured(argv: list[str]) -> dict[str, list]:
    with pytest.raises(Captured) as caught:
        main(argv)
    return caught.value.args[0]


def _ids(spec: str, n: int | None = None) -> list[str]:
    return [s.id for s in load_samples(spec)][:n]


def test_max_samples_cuts_forget_and_retain_of_unlearn_and_steps_to_forget(
        monkeypatch, tmp_path):
    from unlearnscope.cli import steps_to_forget, unlearn

    for module, name in ((unlearn, "run_unlearning"), (steps_to_forget, "steps_to_forget")):
        monkeypatch.setattr(module, "load_args_model", _fake_model)
        monkeypatch.setattr(module, name, _stop_with("forget", "retain"))
    for argv in (["unlearn", "--method", "npo", "--forget", FORGET],
                 ["steps-to-forget", "--method", "npo", "--data", FORGET]):
        got = _run_until_captured([*argv, "--retain", RETAIN, "--model", "m", "--out",
                                   str(tmp_path / argv[0]), "--max-samples", "2"])
        assert [s.id for s in got["forget"]] == _ids(FORGET, 2)
        assert [s.id for s in got["retain"]] == _ids(RETAIN, 2)
        _, action = _action(f"unlearnscope {argv[0]}", "--max-samples")
        assert "--retain" in action.help and argv[-2] in action.help


def test_max_samples_cuts_the_training_data_of_finetune_not_its_target(monkeypatch, tmp_path):
    from unlearnscope.cli import finetune

    monkeypatch.setattr(finetune, "load_args_model", _fake_model)
    monkeypatch.setattr(finetune, "finetune", _stop_with("samples", "target"))
    got = _run_until_captured(["finetune", "--model", "m", "--data", FORGET, "--extra-data",
                               RETAIN, "--target-data", FORGET, "--target-prob", "0.9",
                               "--out", str(tmp_path / "f"), "--max-samples", "5"])
    assert [s.id for s in got["samples"]] == (_ids(FORGET) + _ids(RETAIN))[:5]
    assert [s.id for s in got["target"]] == _ids(FORGET)  # 3: taken whole
    _, action = _action("unlearnscope finetune", "--max-samples")
    assert "--extra-data" in action.help and "not --target-data" in action.help


def test_max_samples_cuts_forget_and_retain_of_validate_sets(monkeypatch, tmp_path):
    from unlearnscope.cli import validate

    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"sample_id": _ids(FORGET), "scorer": "loss", "value": [1.0, 2.0, 3.0],
                  "difficulty": [1.0, 2.0, 3.0]}).to_parquet(run / "scores.parquet")
    monkeypatch.setattr(validate, "load_model", _fake_model)
    retains = []
    monkeypatch.setattr(validate, "CachedUnlearning",
                        lambda model, tokenizer, retain, settings: retains.append(retain))
    monkeypatch.setattr(validate, "easy_hard_sets", _stop_with("forget"))
    got = _run_until_captured(["validate", "sets", "--run", str(run), "--model", "m",
                               "--forget", FORGET, "--retain", RETAIN, "--max-samples", "2"])
    assert [s.id for s in got["forget"]] == _ids(FORGET, 2)
    assert [[s.id for s in r] for r in retains] == [_ids(RETAIN, 2)]


@pytest.mark.parametrize("command", ["score", "circuits", "anchors"])
def test_max_samples_of_one_dataset_says_so(command):
    _, action = _action(f"unlearnscope {command}", "--max-samples")
    assert action.help == "use only the first N samples of --data"
