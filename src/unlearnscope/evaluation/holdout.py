"""Which samples validation must leave out: those any anchor-based scorer's anchors were fitted
on (DESIGN 5.9, "held out, always").

A scorer is anchor-based when its class (in the scorer registry) or its recorded config says
`uses_anchors`. The fit ids of each one come from the scorer configs recorded beside the score
table (`scorers.json`, else the `scorer_configs` of the folder's `config.json`): the config's
`anchor_fit_ids`, else the `fit_ids` of the anchors file the config names, when that file still
holds the easy/hard sets the config recorded (`anchor_sets`). A scorer whose fit ids cannot be
found that way is *unverified*: `resolve_holdout` refuses it, naming the scorer, unless the
caller accepts it (`allow_unverified=True`, the CLI's `--allow-unverified-holdout`); then every
table written from it says so (`UNVERIFIED_COLUMN`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.errors import DataError
from unlearnscope.scoring import scorer_class
from unlearnscope.scoring.runner import SCORERS_FILE

UNVERIFIED_COLUMN = "unverified_holdout"


def uses_anchors(scorer: str, config: Mapping[str, Any] | None) -> bool:
    """Whether `scorer` (a score-table name) is anchor-based: its config or its registered
    class (the config's `name`, else `scorer`) says `uses_anchors`."""
    config = config or {}
    if config.get("uses_anchors"):
        return True
    return bool(getattr(scorer_class(config.get("name", scorer)), "uses_anchors", False))


def _fit_ids_of(config: Mapping[str, Any]) -> tuple[set[str] | None, str]:
    """(fit ids, where they came from) of one anchor-based scorer's config; (None, why not)."""
    if isinstance(config.get("anchor_fit_ids"), list):
        return {str(i) for i in config["anchor_fit_ids"]}, "anchor_fit_ids of its config"
    path = config.get("anchors")
    if not path:
        return None, "its config records neither anchor_fit_ids nor an anchors file"
    try:
        anchors = read_anchors(path)
    except DataError as error:
        return None, f"its anchors file cannot be read ({error})"
    recorded = config.get("anchor_sets")
    if recorded is not None and recorded != anchors.sets_for(config.get("anchor_method")):
        return None, f"{path} no longer holds the anchor sets it was scored with"
    return set(anchors.fit_ids), f"fit_ids of {path}"


@dataclass
class Holdout:
    """The samples left out of validation and how they were found.

    `sources`: scorer -> where its fit ids came from; `unverified`: anchor-based scorers whose
    fit ids were not found (accepted by the caller)."""

    exclude_ids: set[str]
    sources: dict[str, str] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary for `config.json`."""
        return {"n_excluded": len(self.exclude_ids), "anchor_fit_ids_from": self.sources,
                "unverified_holdout": list(self.unverified)}


def resolve_holdout(scores: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]], *,
                    extra_ids: Iterable[str] = (), allow_unverified: bool = False) -> Holdout:
    """Samples to exclude: `extra_ids` plus the fit ids of every anchor-based scorer in the
    score table `scores`, found from `configs` (`read_scorer_configs`).

    Raises `DataError` naming each anchor-based scorer whose fit ids cannot be found, unless
    `allow_unverified`; then they are listed in `Holdout.unverified`."""
    holdout = Holdout(exclude_ids={str(i) for i in extra_ids})
    missing: dict[str, str] = {}
    for scorer in dict.fromkeys(scores["scorer"].astype(str)):
        config = configs.get(scorer)
        if not uses_anchors(scorer, config):
            continue
        ids, source = _fit_ids_of(config or {}) if config else (None, "no config recorded")
        if ids is None:
            missing[scorer] = source
        else:
            holdout.exclude_ids |= ids
            holdout.sources[scorer] = source
    if missing and not allow_unverified:
        listed = "; ".join(f"scorer '{name}': {why}" for name, why in missing.items())
        raise DataError(f"cannot tell which samples the anchors were fitted on ({listed}), so "
                        "they cannot be left out of validation; score with a config that "
                        f"records them ({SCORERS_FILE}), or accept it with "
                        "--allow-unverified-holdout", field="anchor_fit_ids")
    holdout.unverified = tuple(missing)
    return holdout


def unverified_note(unverified: Iterable[str]) -> str:
    """The sentence every table written from unverified scorers carries ('' when none)."""
    names = ", ".join(unverified)
    if not names:
        return ""
    return (f"Unverified holdout: the anchor-fit samples of {names} are unknown and may be "
            "included (--allow-unverified-holdout); correlations of these scorers may be "
            "optimistic.")
