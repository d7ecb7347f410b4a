"""The shared test models of `tiny_models`: the toy tokenizer round-trips its prompt format."""

from __future__ import annotations

from tiny_models import toy_tokenizer


def test_tokenizer_round_trip():
    tokenizer = toy_tokenizer()
    text = "Question: Where was Mira Olsen born?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
