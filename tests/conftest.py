"""Shared fixtures: tiny synthetic data and a tiny Llama saved to disk, built in seconds."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from tiny_models import tiny_llama
from unlearnscope.data import load_samples
from unlearnscope.layout import MODEL_DIR

SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


@pytest.fixture(scope="session")
def real_tofu_dir() -> Path:
    """The real TOFU folder (`../shared/data/tofu` or `$UNLEARNSCOPE_TOFU_DIR`); skips without."""
    candidate = Path(os.environ.get("UNLEARNSCOPE_TOFU_DIR", SHARED_TOFU))
    if not (candidate / "forget01.json").is_file():
        pytest.skip("TOFU data folder not available")
    return candidate


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread: their ops are too small to gain from more, and
    extra threads only contend for the few cores of a test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_samples():
    return load_samples("synthetic:authors?n_authors=4&questions_per_author=3")


@pytest.fixture(scope="session")
def tiny_lm(small_samples):
    """(model, tokenizer): a randomly initialized 2-layer GQA Llama with its own tokenizer."""
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(small_samples, seed=0)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_lm, tmp_path_factory) -> Path:
    """A run folder with the tiny model saved in `model/`, loadable by `load_model`."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder / MODEL_DIR)
    tokenizer.save_pretrained(folder / MODEL_DIR)
    return folder


class NetworkUsed(BaseException):
    """Raised by `no_network` on any connection attempt. Not an `Exception`: the hub client's
    retry loops catch those, which would turn a failing test into a minute of retries."""


@pytest.fixture
def no_network(monkeypatch, tmp_path) -> Path:
    """Every name lookup or connection raises `NetworkUsed`, and the Hugging Face cache is
    the returned folder (empty, under `tmp_path`)."""
    def refuse(*args, **kwargs):
        raise NetworkUsed(f"the test reached for the network: {args[:2]}")

    for owner, name in ((socket, "getaddrinfo"), (socket, "create_connection"),
                        (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, refuse)
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
