"""Reference easy and hard sets of forget samples (DESIGN 5.7): `vote` over measured unlearning
outcomes and the `bilevel` optimization over sample weights."""

from unlearnscope.anchors.bilevel import BilevelResult, BilevelSettings, bilevel_anchors
from unlearnscope.anchors.projection import project_capped_simplex
from unlearnscope.anchors.sets import (
    ANCHORS_FILE,
    AnchorSets,
    read_anchors,
    split_fit,
    write_anchors,
)
from unlearnscope.anchors.vote import VoteResult, read_outcomes, vote_anchor_sets, vote_anchors

__all__ = ["ANCHORS_FILE", "AnchorSets", "BilevelResult", "BilevelSettings", "VoteResult",
           "bilevel_anchors", "project_capped_simplex", "read_anchors", "read_outcomes",
           "split_fit", "vote_anchor_sets", "vote_anchors", "write_anchors"]
