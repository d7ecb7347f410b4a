"""`models.inputs`: samples encoded within a model's context (truncations counted), batches
moved to a device, and the device a model is on."""

from __future__ import annotations

import pytest
import torch

from unlearnscope.data import Sample, encode_sample
from unlearnscope.errors import DataError
from unlearnscope.models.inputs import count_truncated, encode_for, model_device, move_batch
from unlearnscope.runs import read_json, record_truncation, write_config


def test_encode_for_cuts_to_max_length_and_counts_the_cut_samples(tiny_lm):
    model, tokenizer = tiny_lm
    short = Sample("short", "Q?", "A.")
    long_a = Sample("long_a", "Q?", " ".join(["word"] * 30))
    long_b = Sample("long_b", "Q?", " ".join(["city"] * 30))
    prompt = len(encode_sample(tokenizer, short).prompt_ids)
    full_short = len(encode_sample(tokenizer, short).input_ids)
    limit = full_short + 2  # the short sample fits, the long ones do not
    encoded = encode_for(model, tokenizer, [long_a, short, long_b], limit)
    assert encoded.n_truncated == 2 and encoded.truncated_ids == ["long_a", "long_b"]
    assert [len(e.input_ids) for e in encoded.samples] == [limit, full_short, limit]
    assert len(encoded.samples[0].prompt_ids) == prompt
    # the cut keeps the answer's first tokens: a prefix of the uncut encoding
    whole = encode_sample(tokenizer, long_a).input_ids
    assert encoded.samples[0].input_ids == whole[:limit]


def test_count_truncated_counts_what_encode_for_cuts_without_logging(tiny_lm, caplog):
    model, tokenizer = tiny_lm
    samples = [Sample(f"s{n}", "Q?", " ".join(["word"] * n)) for n in (1, 5, 20, 40)]
    limit = len(encode_sample(tokenizer, samples[1]).input_ids)
    with caplog.at_level("WARNING"):
        counted = count_truncated(model, tokenizer, samples, limit)
    assert counted == encode_for(model, tokenizer, samples, limit).n_truncated == 2
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1  # encode_for's only
    assert count_truncated(model, tokenizer, samples) == 0


def test_encode_for_defaults_to_the_models_positions(tiny_lm):
    model, tokenizer = tiny_lm
    positions = model.config.max_position_embeddings
    huge = Sample("huge", "Q?", " ".join(["word"] * (positions + 10)))
    encoded = encode_for(model, tokenizer, [huge, Sample("s", "Q?", "A.")])
    assert encoded.n_truncated == 1 and len(encoded.samples[0].input_ids) == positions
    with pytest.raises(DataError, match=f"max_length {positions + 1} is over"):
        encode_for(model, tokenizer, [huge], positions + 1)


def test_encode_for_takes_answers_in_place_of_the_samples_own(tiny_lm):
    model, tokenizer = tiny_lm
    sample = Sample("s", "Where?", "Porto.")
    encoded = encode_for(model, tokenizer, [sample, sample], answers=["Kyoto.", "Galway."])
    assert [e.input_ids for e in encoded.samples] == [
        encode_sample(tokenizer, sample, answer=a).input_ids for a in ("Kyoto.", "Galway.")]
    with pytest.raises(DataError, match="1 answers for 2 samples"):
        encode_for(model, tokenizer, [sample, sample], answers=["Kyoto."])


def test_move_batch_moves_every_tensor_and_keeps_the_keys():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long),
             "attention_mask": torch.zeros(2, 3, dtype=torch.long)}
    moved = move_batch(batch, torch.device("meta"))
    assert list(moved) == list(batch)
    assert all(t.device.type == "meta" and t.shape == (2, 3) for t in moved.values())
    assert all(t.device.type == "cpu" for t in batch.values())  # the input is left as it was


def test_model_device_is_where_the_weights_are():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")).type == "meta"


def test_the_truncation_count_is_added_to_config_json(tmp_path):
    write_config(tmp_path, "evaluate", {"max_length": 8})
    before = read_json(tmp_path / "config.json")
    assert "n_truncated" not in before
    record_truncation(tmp_path, 3)
    after = read_json(tmp_path / "config.json")
    assert after == {**before, "n_truncated": 3}
    assert write_config(tmp_path / "b", "unlearn", {}, n_truncated=0)["n_truncated"] == 0
    with pytest.raises(DataError, match="file not found"):
        record_truncation(tmp_path / "missing", 1)
