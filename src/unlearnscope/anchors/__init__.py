"""Reference easy and hard sets of forget samples (DESIGN 5.7): `vote` over measured unlearning
outcomes and the `bilevel` optimization over sample weights."""

from unlearnscope.anchors.bilevel import BilevelResult, BilevelSettings, bilevel_anchors
from unlearnscope.anchors.projection import project_capped_simplex
from unlearnscope.anchors.sets import AnchorSets, read_anchors, split_fit, write_anchors
from unlearnscope.anchors.vote import VoteResult, vote_anchor_sets, vote_anchors

__all__ = ["AnchorSets", "BilevelResult", "BilevelSettings", "VoteResult", "bilevel_anchors",
           "project_capped_simplex", "read_anchors", "split_fit", "vote_anchor_sets",
           "vote_anchors", "write_anchors"]
