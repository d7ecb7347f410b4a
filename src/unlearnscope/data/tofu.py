"""TOFU (Maini et al. 2024): `tofu:<split>` from a local folder or the `locuslab/TOFU` hub set.

The local folder holds the hub's files (`forget10.json`, `retain90.json`, `forget10_perturbed.json`,
`real_authors_perturbed.json`, ...), one JSON object per line. Rows of the 4000-row author family
also carry `author` (0-199), 20 questions per author.

Sample ids are `<prefix>-<row>`, the prefix the split's name (`retain90-00017`), except where a
split has a `_perturbed` twin: `forget01/05/10_perturbed`, `real_authors_perturbed` and
`world_facts_perturbed` list the questions of `forget01/05/10`, `real_authors` and `world_facts`
in the same order, with paraphrased and perturbed answers added. Both files of a pair give a
question the same id, spelled with the twin's name: row 3 of `tofu:forget05` and of
`tofu:forget05_perturbed` is `forget05_perturbed-00003`, so tables of the plain split (`score`,
`unlearn`) join those of the perturbed one (`evaluate`, `demo`, and the committed studies).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from unlearnscope.data.jsonl import read_jsonl
from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError

HUB_ID = "locuslab/TOFU"
TOFU_DIR_ENV = "UNLEARNSCOPE_TOFU_DIR"
SPLITS = (
    "full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "holdout01", "holdout05", "holdout10", "real_authors", "real_authors_perturbed",
    "world_facts", "world_facts_perturbed",
)
QUESTIONS_PER_AUTHOR = 20
N_AUTHORS = 200
# split -> its `_perturbed` twin: the same questions in the same order
PERTURBED_TWINS = {split: f"{split}_perturbed" for split in
                   ("forget01", "forget05", "forget10", "real_authors", "world_facts")}
_FORGET_SPLIT = re.compile(r"forget(\d\d)(_perturbed)?")


def id_prefix(split: str) -> str:
    """The sample-id prefix of a TOFU split's rows: the `_perturbed` twin's name where the split
    has one (`forget10` and `forget10_perturbed` -> `forget10_perturbed`), else the split's."""
    return PERTURBED_TWINS.get(split, split)


def forget_percent(split: str) -> int | None:
    """The percentage of the authors a forget split holds (`forget05` and `forget05_perturbed`:
    5), None for another split."""
    match = _FORGET_SPLIT.fullmatch(split)
    return None if match is None else int(match.group(1))


def evaluation_splits(forget_split: str, *, field: str = "forget_split") -> dict[str, str]:
    """The TOFU splits an evaluation of unlearning `forget_split` (`forgetXX`) reads, by role:
    `forget`, its `_perturbed` twin (the same questions with paraphrased and perturbed
    answers); `holdout`, `holdoutXX`; `retain_perturbed`, `real_authors` and `world_facts`,
    the `_perturbed` files of the utility splits. Another name is a `DataError` on `field`."""
    percent = forget_percent(forget_split)
    if percent is None or forget_split != f"forget{percent:02d}":
        raise DataError(f"TOFU forget split '{forget_split}' is not forgetXX "
                        "(forget01, forget05, forget10)", field=field)
    return {"forget": f"{forget_split}_perturbed", "holdout": f"holdout{percent:02d}",
            "retain_perturbed": "retain_perturbed", "real_authors": "real_authors_perturbed",
            "world_facts": "world_facts_perturbed"}


def _first_row_in_full(split: str) -> int | None:
    """Row offset of a split inside `full` (forget splits are the last authors)."""
    if split == "full" or split.startswith("retain9"):
        return 0
    percent = forget_percent(split)
    if percent is not None:
        return N_AUTHORS * QUESTIONS_PER_AUTHOR * (100 - percent) // 100
    return None


def _rows_from_hub(split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(HUB_ID, split, split="train"))
    except Exception as error:
        raise DataError(
            f"could not load '{split}' from the hub dataset {HUB_ID} ({error}); pass --data-dir "
            f"or set {TOFU_DIR_ENV} to a local folder with the TOFU files",
            source=f"tofu:{split}",
        ) from error


def load_tofu(split: str, *, data_dir: str | None = None) -> list[Sample]:
    if split not in SPLITS:
        raise DataError(f"unknown TOFU split '{split}'; known: {', '.join(SPLITS)}",
                        source=f"tofu:{split}")
    folder = data_dir or os.environ.get(TOFU_DIR_ENV)
    if folder is not None:
        path = Path(folder) / f"{split}.json"
        if not path.is_file():
            raise DataError(f"TOFU split file not found in {folder}", source=str(path))
        rows = read_jsonl(path, required=("question", "answer"))
    else:
        rows = _rows_from_hub(split)
    offset = _first_row_in_full(split)
    prefix = id_prefix(split)
    samples = []
    for index, row in enumerate(rows):
        extra = {k: v for k, v in row.items() if k not in ("question", "answer")}
        if offset is not None:
            extra["author"] = (offset + index) // QUESTIONS_PER_AUTHOR
        samples.append(Sample(f"{prefix}-{index:05d}", row["question"], row["answer"], extra))
    return samples
