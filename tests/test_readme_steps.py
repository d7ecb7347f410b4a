"""The README's "Real use" steps, read from README.md and run in order, in process.

The commands come from the README itself (the shell blocks of its "Real use" section before
its first subsection), so a README step that no longer runs fails here. Each line is split
with `shlex` and run through `unlearnscope.cli.main`; the little shell they are written in is
interpreted here: comments, `\\` continuations, `VAR=value` and `export VAR=value`, `$VAR` and
`${VAR}`, `for VAR in WORDS; do ... done`, and `*` globs (sorted, as bash expands them).
Lines that start a multi-process launcher (`accelerate launch`, `torchrun`) are the same
commands under several processes and are not run here.

The README runs TOFU with SmolLM2-135M. Here the same steps run on the embedded default, one
documented substitution at a time (`SUBSTITUTIONS`): synthetic authors stand in for the TOFU
splits, the tiny model (with one tokenizer for the target and the retain model) for SmolLM2,
and set sizes and budgets shrink to the few samples. `$R` is a temporary folder, and
`UNLEARNSCOPE_TOFU_DIR` points at an empty one, so a `tofu:` spec left without a stand-in
fails at once instead of reaching for the hub.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from unlearnscope.cli import main
from unlearnscope.data import load_samples

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Real use"
LAUNCHERS = ("accelerate", "torchrun")

QUERY = "n_authors=10&questions_per_author=4&forget_fraction=0.3"  # 12 forget, 28 retain
FULL = f"synthetic:authors?{QUERY}"
FORGET = f"synthetic:authors/forget?{QUERY}"
RETAIN = f"synthetic:authors/retain?{QUERY}"

# README tokens -> the embedded-default tokens this test runs instead, matched as runs of
# whole arguments in every command line (the first entry that matches at a position wins).
SUBSTITUTIONS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    # the tiny model, its tokenizer trained on forget + retain for target and retain model
    (("--model", "smollm2-135m"), ("--model", "tiny", "--tokenizer-texts", FULL)),
    (("tofu:full",), (FULL,)),
    (("tofu:forget10",), (FORGET,)),
    (("tofu:retain90",), (RETAIN,)),
    # evaluate: the synthetic benchmark on the same authors, short greedy answers
    (("--benchmark", "tofu"),
     ("--benchmark", "synthetic", "--data-options", QUERY, "--max-new-tokens", "8")),
    # fine-tuning the tiny model from scratch takes a larger step than SmolLM2
    (("--lr", "2e-5"), ("--lr", "3e-3")),
    (("--lr", "1e-5"), ("--lr", "1e-3")),
    # sizes for 12 forget samples (6 fitted, 6 held out), and fewer MRD draws
    (("mrd.k=200",), ("mrd.k=8",)),
    (("--k", "40"), ("--k", "2")),
    (("--budget", "50"), ("--budget", "2")),
    # the set and schedule experiments with one method (and one random set) of the five
    (("validate", "sets"), ("validate", "sets", "--unlearn-methods", "npo", "--seeds", "1")),
    (("validate", "schedules"), ("validate", "schedules", "--unlearn-methods", "npo")),
]
# README values that must not reach a command here (each has a stand-in above)
REAL_ONLY = re.compile(r"^(tofu:|smollm2)")

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def readme_steps(text: str) -> list[str]:
    """The logical lines (continuations joined) of the shell blocks between the `SECTION`
    heading and its first subsection, in order."""
    start = text.index(SECTION)
    after = re.search(r"\n#{2,3} ", text[start + len(SECTION):])
    section = text[start:start + len(SECTION) + after.start() if after else len(text)]
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S):
        pending = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            line = (pending + raw).strip()
            pending = ""
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def substitute(argv: list[str], used: set[tuple[str, ...]]) -> list[str]:
    """`argv` with every run of README tokens in `SUBSTITUTIONS` replaced; adds the README
    side of each substitution made to `used`."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        for readme, ours in SUBSTITUTIONS:
            if tuple(argv[index:index + len(readme)]) == readme:
                out.extend(ours)
                used.add(readme)
                index += len(readme)
                break
        else:
            out.append(argv[index])
            index += 1
    return out


class Shell:
    """The README's shell subset, run line by line; `commands` collects each `unlearnscope`
    command (its arguments after substitution) with its exit status."""

    def __init__(self, variables: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.fixed = dict(variables)  # assignments in the README do not override these
        self.variables = dict(variables)
        self.monkeypatch = monkeypatch
        self.commands: list[tuple[list[str], int]] = []
        self.substituted: set[tuple[str, ...]] = set()

    def expand(self, word: str) -> list[str]:
        def value(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            if name not in self.variables:
                raise AssertionError(f"README uses ${name} before setting it")
            return self.variables[name]

        word = _VARIABLE.sub(value, word)
        if any(char in word for char in "*?["):
            return sorted(glob.glob(word)) or [word]
        return [word]

    def assign(self, word: str, *, export: bool) -> None:
        name, _, value = word.partition("=")
        if name not in self.fixed:
            (expanded,) = self.expand(value)
            self.variables[name] = expanded
        if export:
            self.monkeypatch.setenv(name, self.variables[name])

    def run(self, lines: list[str]) -> None:
        lines = list(lines)
        while lines:
            words = shlex.split(lines.pop(0), comments=True)
            if not words:
                continue
            if words[0] == "for":
                body = self._loop_body(lines)
                assert len(words) >= 5 and words[2] == "in" and words[-2].endswith(";") \
                    and words[-1] == "do", f"unsupported loop: {words}"
                items = [*words[3:-2], words[-2][:-1]]
                for item in [w for i in items if i for w in self.expand(i)]:
                    self.variables[words[1]] = item
                    self.run(body)
            elif words[0] == "export":
                for word in words[1:]:
                    self.assign(word, export=True)
            elif re.fullmatch(r"\w+=.*", words[0]) and len(words) == 1:
                self.assign(words[0], export=False)
            elif words[0] in LAUNCHERS:
                continue
            elif words[0] == "unlearnscope":
                argv = substitute([w for word in words[1:] for w in self.expand(word)],
                                  self.substituted)
                leftover = [w for w in argv if REAL_ONLY.match(w)]
                assert not leftover, f"no stand-in for {leftover} in {argv}"
                status = main(argv)
                self.commands.append((argv, status))
                assert status == 0, f"README step failed (exit {status}): unlearnscope " \
                                    + shlex.join(argv)
            else:
                raise AssertionError(f"README step the test cannot run: {shlex.join(words)}")

    @staticmethod
    def _loop_body(lines: list[str]) -> list[str]:
        body: list[str] = []
        depth = 1
        while lines:
            line = lines.pop(0)
            first = line.split()[0]
            depth += first == "for"
            depth -= first == "done"
            if depth == 0:
                return body
            body.append(line)
        raise AssertionError("'for' without 'done' in the README")


def _names(commands: list[tuple[list[str], int]]) -> Iterator[str]:
    """Each command's name, with the action of `validate` (`validate sets`)."""
    for argv, _ in commands:
        yield " ".join(argv[:2]) if argv[0] == "validate" and not argv[1].startswith("-") \
            else argv[0]


def test_readme_steps_parse():
    """The section is found and holds the pipeline, in the order the README gives it."""
    steps = readme_steps(README.read_text(encoding="utf-8"))
    commands = [shlex.split(s, comments=True) for s in steps]
    used = [w[1] for w in commands if w and w[0] == "unlearnscope"]
    for name in ("finetune", "score", "circuits", "unlearn", "evaluate", "anchors", "validate",
                 "report"):
        assert name in used, f"README 'Real use' steps lost `unlearnscope {name}`"
    assert used.index("finetune") < used.index("score") < used.index("anchors") \
        < used.index("validate") < used.index("report")


def test_readme_steps_run_in_order(tmp_path, monkeypatch):
    run_dir = tmp_path / "tofu"
    no_tofu = tmp_path / "no-tofu"
    no_tofu.mkdir()
    shell = Shell({"R": str(run_dir), "UNLEARNSCOPE_TOFU_DIR": str(no_tofu)}, monkeypatch)
    shell.run(readme_steps(README.read_text(encoding="utf-8")))

    unused = [readme for readme, _ in SUBSTITUTIONS if readme not in shell.substituted]
    assert not unused, f"the README no longer has {unused}: update SUBSTITUTIONS"
    names = list(_names(shell.commands))
    assert names == ["finetune", "finetune", "score", "circuits", *["unlearn", "evaluate"] * 5,
                     "anchors", "score", "validate", "validate sets", "validate schedules",
                     "report"]
    # step 1: the target trained on forget + retain, its --target-prob measured on the forget set
    target = json.loads((run_dir / "target" / "finetune.json").read_text())
    assert target["n_samples"] == len(load_samples(FULL))
    assert target["n_target_samples"] == len(load_samples(FORGET)) == 12
    assert (run_dir / "target" / "model").is_dir()
    # step 4's CUD was merged beside step 2's scorers, and step 5 validated all of them
    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert {"loss", "mrd", "mrd_grad", "cud"} <= set(scores["scorer"])
    assert (scores.groupby("scorer").size() == 12).all()
    anchors = json.loads((run_dir / "anchors" / "anchors.json").read_text())
    held_out = set(anchors["held_out_ids"])
    assert len(held_out) == 6 and set(anchors["easy"]) <= set(anchors["fit_ids"])
    correlations = pd.read_csv(run_dir / "validation" / "correlations.csv")
    assert {"cud", "mrd", "loss"} <= set(correlations["scorer"])
    assert set(correlations["n"]) == {len(held_out)}  # the fit half is left out
    sets = pd.read_csv(run_dir / "validation" / "sets.csv")
    assert {"cud", "mrd", "loss"} <= set(sets["scorer"])
    schedules = pd.read_csv(run_dir / "validation" / "schedules.csv")
    assert set(schedules["method"]) == {"npo"}
    assert (run_dir / "report.html").is_file()
