"""Trivial controls: hand-counted lengths and surprisals, chunking invariance, positions."""

import json
import math
from collections import Counter

import pandas as pd
import pytest

from unlearnscope.data import Sample, encode_samples, load_samples
from unlearnscope.data.tokenize import answer_text
from unlearnscope.errors import DataError
from unlearnscope.scoring import SCORERS, get_scorer, score_samples
from unlearnscope.scoring.controls import CONTROLS, author_position

OPTIONS = "?n_authors=4&questions_per_author=3"
CORPUS = f"synthetic:authors{OPTIONS}"
FORGET, RETAIN = f"synthetic:authors/forget{OPTIONS}", f"synthetic:authors/retain{OPTIONS}"


def test_controls_are_registered_marked_and_oriented_a_priori():
    assert set(CONTROLS) == {name for name, cls in SCORERS.items() if cls.is_control}
    orientation = {name: SCORERS[name].higher_is_harder for name in CONTROLS}
    assert orientation == {"answer_length": False, "question_length": False,
                           "sequence_length": False, "answer_rarity": False,
                           "author_position": True}


def test_lengths_count_prompt_and_answer_tokens(tiny_lm, small_samples):
    model, tok = tiny_lm
    encoded = encode_samples(tok, small_samples).samples
    for name, expected in [("answer_length", [len(e.answer_ids) for e in encoded]),
                           ("question_length", [len(e.prompt_ids) for e in encoded]),
                           ("sequence_length", [len(e.prompt_ids) + len(e.answer_ids)
                                                for e in encoded])]:
        got = get_scorer(name).score(model, tok, small_samples, encoded, batch_size=4)
        assert got.tolist() == [float(v) for v in expected]
    # the answer length counts EOS: one more than the answer text's own tokens
    text = [len(tok(answer_text(tok, s.answer), add_special_tokens=False)["input_ids"])
            for s in small_samples]
    assert [len(e.answer_ids) for e in encoded] == [n + 1 for n in text]


def _hand_surprisal(tok, corpus, sample):
    """-mean log((c+1)/(N+V)) over the answer text's tokens, counted with a Counter."""
    counts = Counter()
    for s in corpus:
        counts.update(tok(answer_text(tok, s.answer), add_special_tokens=False)["input_ids"])
    total, vocab = sum(counts.values()), len(tok)
    ids = tok(answer_text(tok, sample.answer), add_special_tokens=False)["input_ids"]
    return -sum(math.log((counts[t] + 1) / (total + vocab)) for t in ids) / len(ids)


def test_rarity_equals_a_hand_count_over_the_corpus(tiny_lm, small_samples):
    model, tok = tiny_lm
    forget, retain = load_samples(FORGET), load_samples(RETAIN)
    scorer = get_scorer("answer_rarity", corpus=[FORGET, RETAIN])
    encoded = encode_samples(tok, forget).samples
    got = scorer.score(model, tok, forget, encoded, batch_size=4)
    expected = [_hand_surprisal(tok, forget + retain, s) for s in forget]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # the same corpus given twice, or as samples, counts every sample once
    twice = get_scorer("answer_rarity", corpus=[CORPUS, CORPUS])
    as_samples = get_scorer("answer_rarity", corpus=forget + retain)
    for other in (twice, as_samples):
        assert other.score(model, tok, forget, encoded, batch_size=4).tolist() == \
            pytest.approx(expected, rel=1e-12)
    assert as_samples.config()["corpus"] == f"{len(forget + retain)} samples"
    assert len(as_samples.config()["corpus_digest"]) == 40
    json.dumps(scorer.config())


def test_rarity_needs_a_corpus():
    with pytest.raises(DataError, match="corpus"):
        get_scorer("answer_rarity")
    with pytest.raises(DataError, match="corpus"):
        get_scorer("answer_rarity", corpus=[])


def test_controls_do_not_depend_on_chunks_or_batches(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    names = ["answer_length", "question_length", "sequence_length", "author_position"]
    scorers = [get_scorer(n) for n in names] + [get_scorer("answer_rarity", corpus=CORPUS)]
    whole = score_samples(model, tok, small_samples, scorers, tmp_path / "whole", chunk_size=64)
    chunked = score_samples(model, tok, small_samples, scorers, tmp_path / "chunked",
                            chunk_size=1, batch_size=1)
    pd.testing.assert_frame_equal(whole, chunked)
    lengths = whole[whole.scorer == "answer_length"]
    assert (lengths.difficulty == -lengths.value).all()
    position = whole[whole.scorer == "author_position"]
    assert (position.difficulty == position.value).all()


def test_author_position_from_ids_and_fields():
    assert author_position(Sample("forget01-00023", "q", "a", {"author": 199})) == 3
    assert author_position(Sample("retain90-00040", "q", "a", {"author": 2})) == 0
    assert author_position(Sample("forget10_perturbed-00399", "q", "a", {"author": 199})) == 19
    assert author_position(Sample("a003-q07", "q", "a", {"author": 3})) == 7
    assert author_position(Sample("x", "q", "a", {"question_index": 5})) == 5
    samples = load_samples(CORPUS)
    assert [author_position(s) for s in samples] == [0, 1, 2] * (len(samples) // 3)
    for sample in (Sample("real_authors-00003", "q", "a"), Sample("row7", "q", "a",
                                                                  {"author": 1})):
        with pytest.raises(DataError, match="question_index"):
            author_position(sample)


@pytest.mark.integration
def test_tofu_full_name_questions_are_first(real_tofu_dir):
    forget = load_samples("tofu:forget10", data_dir=str(real_tofu_dir))
    full = load_samples("tofu:full", data_dir=str(real_tofu_dir))
    offset = len(full) - len(forget)  # forget10 is the last 20 authors of full
    assert [s.question for s in forget] == [s.question for s in full[offset:]]
    positions = [author_position(s) for s in forget]
    assert positions == [(offset + row) % 20 for row in range(len(forget))]
    first = [p for s, p in zip(forget, positions, strict=True)
             if "full name" in s.question.lower()]
    assert first and set(first) == {0}
