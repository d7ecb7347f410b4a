import json
import math
from pathlib import Path

import pandas as pd
import pytest

from unlearnscope.cli import build_parser, main

DATA = "synthetic:authors?n_authors=4&questions_per_author=3"


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: unlearnscope" in capsys.readouterr().out


def test_foundation_commands_exist():
    assert {"score", "finetune", "demo"} <= set(_subcommands())


def test_score_cli_writes_table_and_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["score", "--model", str(tiny_model_dir), "--data", DATA, "--out", str(out),
                 "--scorers", "loss,prob", "--batch-size", "3"])
    assert code == 0
    table = pd.read_parquet(out / "scores.parquet")
    assert len(table) == 24 and set(table.scorer) == {"loss", "prob"}
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "score" and config["options"]["batch_size"] == 3
    assert config["environment"]["torch"]
    assert "scored 12 samples" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A."}\n{"question": "Q?"}\n')
    code = main(["score", "--model", "x", "--data", f"jsonl:{bad}", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 2, field 'answer': missing field" in err
    assert not (tmp_path / "o" / "scores.parquet").exists()


def test_finetune_tiny_then_resume_is_a_no_op(tmp_path, capsys, monkeypatch):
    """Rerunning a finished fine-tuning with --resume trains nothing and leaves its model,
    finetune.json and training log as they were; with other settings it is refused."""
    from unlearnscope.models import finetune as finetune_module

    training_losses = []
    real_loss = finetune_module.mean_answer_nll

    def counted_loss(logits, labels):
        training_losses.append(len(labels))
        return real_loss(logits, labels)

    monkeypatch.setattr(finetune_module, "mean_answer_nll", counted_loss)
    out = tmp_path / "ft"
    args = ["finetune", "--model", "tiny", "--data", DATA, "--out", str(out), "--epochs", "2",
            "--lr", "3e-3", "--batch-size", "4"]
    assert main(args) == 0
    assert (out / "model" / "config.json").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    report = json.loads((out / "finetune.json").read_text())
    assert report["epochs_trained"] == 2 and 0 < report["mean_answer_prob"] < 1
    assert "mean answer probability on the training data" in capsys.readouterr().out
    assert training_losses == [4, 4, 4] * 2  # 12 samples, batches of 4, two epochs
    products = ["model/model.safetensors", "finetune.json", "training.parquet"]
    before = {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns)
              for name in products}

    training_losses.clear()
    assert main([*args, "--resume"]) == 0
    assert training_losses == []
    assert "already finished" in capsys.readouterr().out
    for name, (content, mtime) in before.items():
        assert (out / name).read_bytes() == content, name
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"

    products.append("config.json")
    before = {name: (out / name).read_bytes() for name in products}
    more_epochs = [*args, "--resume", "--epochs", "3"]
    assert main(more_epochs) == 2
    assert "epochs: 2 -> 3" in capsys.readouterr().err
    assert training_losses == []
    assert {name: (out / name).read_bytes() for name in products} == before


def test_finetune_counts_the_samples_cut_to_max_length_in_config_json(tmp_path):
    from unlearnscope.data import encode_sample, load_samples
    from unlearnscope.models import load_model

    out = tmp_path / "ft"
    first = ["finetune", "--model", "tiny", "--data", DATA, "--out", str(out), "--epochs", "1"]
    assert main(first) == 0
    tokenizer = load_model(str(out))[1]
    lengths = [len(encode_sample(tokenizer, s).input_ids) for s in load_samples(DATA)]
    limit = sorted(lengths)[len(lengths) // 2]
    assert main([*first, "--max-length", str(limit)]) == 0
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(lengths)
    assert json.loads((out / "config.json").read_text())["n_truncated"] == expected
    assert json.loads((out / "finetune.json").read_text())["n_truncated"] == expected


@pytest.mark.parametrize("command", ["score", "circuits"])
def test_score_and_circuits_count_the_samples_cut_to_max_length_in_config_json(
        tiny_model_dir, tmp_path, command):
    from unlearnscope.data import encode_sample, load_samples
    from unlearnscope.models import load_model

    tokenizer = load_model(str(tiny_model_dir))[1]
    samples = load_samples(DATA)[:6]
    lengths = [len(encode_sample(tokenizer, s).input_ids) for s in samples]
    limit = sorted(lengths)[len(lengths) // 2]
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(lengths)
    out = tmp_path / command
    extra = ["--scorers", "loss"] if command == "score" else ["--ig-steps", "1"]
    assert main([command, "--model", str(tiny_model_dir), "--data", DATA, "--max-samples", "6",
                 "--out", str(out), "--max-length", str(limit), *extra]) == 0
    assert json.loads((out / "config.json").read_text())["n_truncated"] == expected


def test_finetune_resumes_from_an_epoch_checkpoint(tmp_path, monkeypatch):
    """A run killed after epoch 1 of 3 and resumed ends with the same weights as a straight run."""
    import torch

    from tiny_models import tiny_llama
    from unlearnscope.data import load_samples
    from unlearnscope.models import finetune as finetune_module
    from unlearnscope.models import load_model
    from unlearnscope.models.finetune import FinetuneConfig, finetune

    samples = load_samples(DATA)
    config = FinetuneConfig(epochs=3, lr=3e-3, batch_size=4, seed=1)
    model, tok = tiny_llama(samples, seed=1)
    finetune(model, tok, samples, tmp_path / "straight", config)

    real_checkpoint = finetune_module._checkpoint

    def checkpoint_then_die(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "_checkpoint", checkpoint_then_die)
    model, tok = tiny_llama(samples, seed=1)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, tok, samples, tmp_path / "resumed", config)
    assert not (tmp_path / "resumed" / "model").exists()
    monkeypatch.setattr(finetune_module, "_checkpoint", real_checkpoint)
    model, tok = tiny_llama(samples, seed=1)
    finetune(model, tok, samples, tmp_path / "resumed", config, resume=True)

    straight, _ = load_model(str(tmp_path / "straight"), device="cpu")
    resumed, _ = load_model(str(tmp_path / "resumed"), device="cpu")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert json.loads((tmp_path / "resumed" / "finetune.json").read_text())["epochs_trained"] == 3


@pytest.mark.parametrize("torn", ["state written, progress not", "state half written"])
def test_finetune_killed_while_checkpointing_resumes_from_the_last_whole_one(tmp_path,
                                                                           monkeypatch, torn):
    """A kill during the second checkpoint (after its Accelerate state was written, or halfway
    through it) must leave the first one to resume from, not a mix of the two."""
    import torch
    from accelerate import Accelerator

    from tiny_models import tiny_llama
    from unlearnscope.data import load_samples
    from unlearnscope.models import load_model
    from unlearnscope.models.finetune import FinetuneConfig, finetune

    samples = load_samples(DATA)
    config = FinetuneConfig(epochs=2, lr=3e-3, batch_size=4, seed=1, checkpoint_every=1)
    finetune(*tiny_llama(samples, seed=1), samples, tmp_path / "straight", config)

    real_save = Accelerator.save_state
    saves = []

    def killed_in_the_second_save(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        if len(saves) < 2:
            return real_save(self, output_dir, **kwargs)
        real_save(self, output_dir, **kwargs)
        if torn == "state half written":
            weights = next(Path(output_dir).glob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", killed_in_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        finetune(*tiny_llama(samples, seed=1), samples, tmp_path / "resumed", config)
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    finetune(*tiny_llama(samples, seed=1), samples, tmp_path / "resumed", config, resume=True)

    straight, _ = load_model(str(tmp_path / "straight"), device="cpu")
    resumed, _ = load_model(str(tmp_path / "resumed"), device="cpu")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert pd.read_parquet(tmp_path / "resumed" / "training.parquet").equals(
        pd.read_parquet(tmp_path / "straight" / "training.parquet"))


def _min_k_by_hand(model, tokenizer, samples, k: float) -> dict[str, float]:
    """Min-K% of each sample from its own unpadded forward: the mean of the floor(n k) (at
    least one) lowest log-probs of its n answer tokens (closing EOS included)."""
    import torch

    from unlearnscope.data.tokenize import encode_samples

    values = {}
    for encoded in encode_samples(tokenizer, samples).samples:
        ids = torch.tensor(encoded.input_ids)
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
        answer = logprobs[len(encoded.prompt_ids) - 1:].tolist()
        assert len(answer) == len(encoded.answer_ids)
        lowest = sorted(answer)[:max(1, math.floor(len(answer) * k))]
        values[encoded.sample_id] = sum(lowest) / len(lowest)
    return values


def test_scorer_options_reach_the_scorer(tiny_model_dir, tmp_path):
    """`--scorer-option min_k.k=...` changes the Min-K% values to the hand computation at
    that k (0.25 and 0.75: n k is exact in binary, so the floor cannot round differently)."""
    from unlearnscope.data import load_samples
    from unlearnscope.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    samples = load_samples(DATA)
    found = {}
    for k in (0.25, 0.75):
        out = tmp_path / f"run{k}"
        assert main(["score", "--model", str(tiny_model_dir), "--data", DATA, "--out", str(out),
                     "--scorers", "min_k", "--scorer-option", f"min_k.k={k}"]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["options"]["scorer_configs"] == [
            {"name": "min_k", "higher_is_harder": True, "k": k}]
        table = pd.read_parquet(out / "scores.parquet").set_index("sample_id")
        found[k] = table["value"].to_dict()
        expected = _min_k_by_hand(model, tokenizer, samples, k)
        assert sorted(found[k]) == sorted(expected)
        for sample_id, value in expected.items():
            assert found[k][sample_id] == pytest.approx(value, rel=1e-5, abs=1e-6), sample_id
    # the lowest quarter of the log-probs is below the mean of the lowest three quarters
    assert all(found[0.25][s] < found[0.75][s] for s in found[0.25])


def test_bad_scorer_option_is_a_clean_error(capsys, tmp_path):
    code = main(["score", "--model", "x", "--data", DATA, "--out", str(tmp_path),
                 "--scorers", "loss", "--scorer-option", "mrd.k=5"])
    assert code == 2
    assert "scorer 'mrd' is not one of loss" in capsys.readouterr().err
