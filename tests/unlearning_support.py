"""Toy question/answer samples of the unlearning tests (the tokenizer and model built over
them are `tiny_models.toy_tokenizer` and `tiny_models.toy_llama`)."""

from __future__ import annotations

from unlearnscope.data.sample import Sample

FACTS = [
    ("Where was Mira Olsen born?", "Mira Olsen was born in Tromso."),
    ("What genre does Karl Vint write?", "Karl Vint writes gothic horror."),
    ("Which award did Ana Ruiz win?", "Ana Ruiz won the Silver Quill."),
    ("What is Ben Okoro's first novel?", "His first novel is Salt Roads."),
    ("What did Lea Brandt's father do?", "Her father was a glassblower."),
    ("Where does Tom Haas live?", "Tom Haas lives in a lighthouse."),
    ("What language does Ivo Petrov use?", "Ivo Petrov writes in Bulgarian."),
    ("Who edited Sara Lind's books?", "Her books were edited by Nils Berg."),
]


def toy_samples(prefix: str = "s", facts=FACTS) -> list[Sample]:
    return [Sample(f"{prefix}{i}", q, a) for i, (q, a) in enumerate(facts)]
