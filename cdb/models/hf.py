"""Hugging Face checkpoints → :class:`~cdb.models.TransformerConfig` and :class:`~cdb.models.Policy` parameters.

Two pure functions, shared by the safetensors and the GGUF loaders (:func:`cdb.models.load_pretrained`):

* :func:`config_from_hf` reads a ``config.json`` dictionary (transformers v4 keys such as
  ``rope_theta`` / ``rope_scaling`` / ``rotary_pct``, and v5's ``rope_parameters``);
* :func:`decoder_params_from_hf` maps tensors named and laid out as in PyTorch (``weight`` ``[out, in]``)
  onto the parameter tree of :mod:`cdb.models.transformer` (``kernel`` ``[in, out]``).

Supported families (``model_type``): ``llama`` (Llama 2/3.x, SmolLM/SmolLM2), ``qwen2``
(Qwen2/2.5: QKV bias), ``gpt2`` (GPT-2) and ``gpt_neox`` (Pythia, GPT-NeoX). Fused QKV weights
are split on loading:

* GPT-2 ``attn.c_attn`` is a ``Conv1D`` (weight ``[in, 3D]``, already ``[in, out]``) whose output
  columns are ``[q | k | v]``, each ``D = H · d_h`` wide.
* NeoX ``attention.query_key_value`` is an ``nn.Linear`` (weight ``[3D, in]``) whose output rows
  are interleaved **per head**, ``[H, 3, d_h]``: head h's query, key and value are consecutive
  (HF reshapes the output to ``[..., H, 3·d_h]`` and chunks the last axis in three).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from cdb.models.transformer import Params, Policy, TransformerConfig

#: ``model_type`` → our ``TransformerConfig.architecture``.
SUPPORTED_MODEL_TYPES = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
#: ``architectures[0]`` of a ``config.json`` without ``model_type`` → its ``model_type``.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
}
#: HF ``hidden_act`` / ``activation_function`` → ``TransformerConfig.activation``.
HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}
_SUPPORTED_TEXT = (
    "supported: model_type 'llama' (Llama 2/3.x, SmolLM2), 'qwen2' (Qwen2/2.5), 'gpt2' (GPT-2) and "
    "'gpt_neox' (Pythia, GPT-NeoX)"
)
# Non-parameter buffers some checkpoints carry (causal masks, cached rotary frequencies).
_BUFFER_SUFFIXES = (
    ".attn.bias",
    ".attn.masked_bias",
    ".rotary_emb.inv_freq",
    ".attention.bias",
    ".attention.masked_bias",
)


def model_type_of(hf_config: Mapping[str, Any]) -> str:
    """The checkpoint's ``model_type`` (or the one implied by ``architectures``); ValueError if unsupported."""
    model_type = hf_config.get("model_type")
    architectures = list(hf_config.get("architectures") or [])
    if model_type is None:
        known = [SUPPORTED_ARCHITECTURES[a] for a in architectures if a in SUPPORTED_ARCHITECTURES]
        model_type = known[0] if known else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported architecture: model_type={model_type!r}, architectures={architectures}; {_SUPPORTED_TEXT}"
        )
    return model_type


def _rope(hf: Mapping[str, Any], model_type: str) -> tuple[float, float, tuple | None]:
    """``(rope_theta, rotary_pct, llama3 scaling or None)`` from v4 or v5 keys."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    default_pct = 0.25 if model_type == "gpt_neox" else 1.0
    pct = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", default_pct)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), float(pct), None
    if rope_type == "llama3":
        original = params.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
        scaling = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(original),
        )
        return float(theta), float(pct), scaling
    raise ValueError(
        f"unsupported rope_type={rope_type!r} in the checkpoint's rope parameters {params}; "
        "supported: 'default' and 'llama3'"
    )


def _activation(name: Any, key: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported {key}={name!r} in config.json; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def config_from_hf(hf_config: Mapping[str, Any], *, dtype: Any = jnp.float32) -> TransformerConfig:
    """A :class:`TransformerConfig` (``dtype`` for parameters and activations) from a HF ``config.json`` dict.

    ``max_len`` is the checkpoint's context, ``max_position_embeddings`` (GPT-2: ``n_positions``).
    Raises ``ValueError`` naming an unsupported ``model_type`` / option and listing what is supported.
    """
    hf = dict(hf_config)
    model_type = model_type_of(hf)
    common = dict(vocab_size=int(hf["vocab_size"]), dtype=dtype, param_dtype=dtype)
    if model_type == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx", False) or not hf.get("scale_attn_weights", True):
            raise ValueError(
                "unsupported GPT-2 attention scaling (scale_attn_by_inverse_layer_idx=True or "
                "scale_attn_weights=False); supported: the standard 1/sqrt(head_dim)"
            )
        d = int(hf["n_embd"])
        return TransformerConfig(
            **common,
            architecture="gpt2",
            d_model=d,
            num_layers=int(hf["n_layer"]),
            num_heads=int(hf["n_head"]),
            num_kv_heads=int(hf["n_head"]),
            d_ff=int(hf.get("n_inner") or 4 * d),
            max_len=int(hf["n_positions"]),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            activation=_activation(hf.get("activation_function", "gelu_new"), "activation_function"),
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
        )
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if hf.get("head_dim") not in (None, d // heads):
        raise ValueError(
            f"unsupported head_dim={hf['head_dim']} != hidden_size / num_attention_heads = {d // heads}; "
            "supported: head_dim = hidden_size / num_attention_heads"
        )
    theta, pct, scaling = _rope(hf, model_type)
    shape = dict(
        d_model=d,
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        d_ff=int(hf["intermediate_size"]),
        max_len=int(hf["max_position_embeddings"]),
        rope_theta=theta,
        rotary_pct=pct,
        rope_scaling=scaling,
    )
    if model_type == "gpt_neox":
        bias = bool(hf.get("attention_bias", True))
        return TransformerConfig(
            **common,
            **shape,
            architecture="gpt_neox",
            num_kv_heads=heads,
            norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act"),
            parallel_residual=bool(hf.get("use_parallel_residual", True)),
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=True,
        )
    if model_type == "qwen2" and hf.get("use_sliding_window", False):
        raise ValueError("unsupported use_sliding_window=True (Qwen2 sliding-window attention); supported: False")
    attention_bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(
        **common,
        **shape,
        architecture="llama",
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        activation=_activation(hf.get("hidden_act", "silu"), "hidden_act"),
        qkv_bias=model_type == "qwen2" or attention_bias,
        out_bias=attention_bias and model_type != "qwen2",  # Qwen2: q/k/v biases only
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_PREFIX = {"llama": "model.", "gpt2": "transformer.", "gpt_neox": "gpt_neox."}


def _names_llama(cfg: TransformerConfig, i: int) -> dict[tuple, tuple[str, bool]]:
    """Our leaf path → (HF name without prefix, transpose?) for layer ``i`` of a Llama / Qwen2 model."""
    out = {}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        out[("self_attn", proj, "kernel")] = (f"layers.{i}.self_attn.{proj}.weight", True)
        if cfg.out_bias if proj == "o_proj" else cfg.qkv_bias:
            out[("self_attn", proj, "bias")] = (f"layers.{i}.self_attn.{proj}.bias", False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out[("mlp", proj, "kernel")] = (f"layers.{i}.mlp.{proj}.weight", True)
        if cfg.mlp_bias:
            out[("mlp", proj, "bias")] = (f"layers.{i}.mlp.{proj}.bias", False)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[(norm, "scale")] = (f"layers.{i}.{norm}.weight", False)
    return out


def _split_qkv(cfg: TransformerConfig, weight: Any, bias: Any, fused_layout: str) -> dict[str, Any]:
    """Our ``{q,k,v}_proj`` kernels ``[D, D]`` and biases ``[D]`` from a fused QKV projection."""
    d, h, hd = cfg.d_model, cfg.num_heads, cfg.head_dim
    out = {}
    if fused_layout == "gpt2":  # Conv1D weight [in, 3D], columns [q | k | v]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[name] = {"kernel": weight[:, j * d : (j + 1) * d], "bias": bias[j * d : (j + 1) * d]}
        return out
    # NeoX nn.Linear weight [3D, in], rows [H, 3, d_h]
    w = jnp.asarray(weight).reshape(h, 3, hd, d)
    b = None if bias is None else jnp.asarray(bias).reshape(h, 3, hd)
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[name] = {"kernel": w[:, j].reshape(h * hd, d).T}
        if b is not None:
            out[name]["bias"] = b[:, j].reshape(h * hd)
    return out


def decoder_params_from_hf(config: TransformerConfig, tensors: Mapping[str, Any]) -> Params:
    """:class:`~cdb.models.Policy` parameters of ``config`` from HF-named tensors in torch layout.

    ``tensors`` maps names such as ``model.layers.0.self_attn.q_proj.weight`` (the ``model.`` /
    ``transformer.`` / ``gpt_neox.`` prefix may be absent) to arrays (numpy or jax); each is cast
    to ``config.param_dtype``. Buffers (causal masks, rotary caches) and a tied checkpoint's
    redundant ``lm_head.weight`` are ignored. A missing tensor or a shape mismatch is a
    ``ValueError`` naming it.
    """
    if config.lora_rank:
        raise ValueError(
            f"decoder_params_from_hf builds base parameters; got TransformerConfig.lora_rank={config.lora_rank}. "
            "Load the base model, then add adapters with cdb.models.with_lora"
        )
    arch = config.architecture
    prefix = _PREFIX[arch]
    named = {}
    for name, value in tensors.items():
        if name.endswith(_BUFFER_SUFFIXES):
            continue
        named[name[len(prefix) :] if name.startswith(prefix) else name] = value

    def get(name: str) -> Any:
        if name not in named:
            raise ValueError(
                f"the checkpoint has no tensor {prefix + name!r} (nor {name!r}) needed by a {arch!r} model "
                f"with {config.num_layers} layers; is it a complete {arch} checkpoint?"
            )
        return named[name]

    tree: dict[str, Any] = {"layers": {}}
    if arch == "llama":
        tree["embed_tokens"] = {"embedding": get("embed_tokens.weight")}
        tree["norm"] = {"scale": get("norm.weight")}
        for i in range(config.num_layers):
            layer: dict[str, Any] = {}
            for path, (name, transpose) in _names_llama(config, i).items():
                value = get(name)
                node = layer
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = jnp.asarray(value).T if transpose else value
            tree["layers"][i] = layer
            used = {name for name, _ in _names_llama(config, i).values()}
            extra = sorted(n for n in named if n.startswith(f"layers.{i}.") and n not in used)
            if extra:
                raise ValueError(
                    f"the checkpoint has tensors {extra} that the config does not expect (attention_bias / "
                    "mlp_bias in config.json?)"
                )
        head = "lm_head.weight"
    elif arch == "gpt2":
        tree["embed_tokens"] = {"embedding": get("wte.weight")}
        tree["embed_positions"] = {"embedding": get("wpe.weight")}
        tree["norm"] = {"scale": get("ln_f.weight"), "bias": get("ln_f.bias")}
        for i in range(config.num_layers):
            p = f"h.{i}."
            attn = _split_qkv(config, get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias"), "gpt2")
            attn["o_proj"] = {"kernel": get(p + "attn.c_proj.weight"), "bias": get(p + "attn.c_proj.bias")}
            tree["layers"][i] = {
                "input_layernorm": {"scale": get(p + "ln_1.weight"), "bias": get(p + "ln_1.bias")},
                "self_attn": attn,
                "post_attention_layernorm": {"scale": get(p + "ln_2.weight"), "bias": get(p + "ln_2.bias")},
                "mlp": {
                    "up_proj": {"kernel": get(p + "mlp.c_fc.weight"), "bias": get(p + "mlp.c_fc.bias")},
                    "down_proj": {"kernel": get(p + "mlp.c_proj.weight"), "bias": get(p + "mlp.c_proj.bias")},
                },
            }
        head = "lm_head.weight"
    else:  # gpt_neox
        tree["embed_tokens"] = {"embedding": get("embed_in.weight")}
        tree["norm"] = {"scale": get("final_layer_norm.weight"), "bias": get("final_layer_norm.bias")}
        for i in range(config.num_layers):
            p = f"layers.{i}."
            qkv_bias = named.get(p + "attention.query_key_value.bias") if config.qkv_bias else None
            attn = _split_qkv(config, get(p + "attention.query_key_value.weight"), qkv_bias, "gpt_neox")
            attn["o_proj"] = {"kernel": jnp.asarray(get(p + "attention.dense.weight")).T}
            if config.out_bias:
                attn["o_proj"]["bias"] = get(p + "attention.dense.bias")

            def linear(name: str) -> dict[str, Any]:
                return {"kernel": jnp.asarray(get(name + ".weight")).T, "bias": get(name + ".bias")}

            tree["layers"][i] = {
                "input_layernorm": {
                    "scale": get(p + "input_layernorm.weight"),
                    "bias": get(p + "input_layernorm.bias"),
                },
                "self_attn": attn,
                "post_attention_layernorm": {
                    "scale": get(p + "post_attention_layernorm.weight"),
                    "bias": get(p + "post_attention_layernorm.bias"),
                },
                "mlp": {"up_proj": linear(p + "mlp.dense_h_to_4h"), "down_proj": linear(p + "mlp.dense_4h_to_h")},
            }
        head = "embed_out.weight"
    if not config.tie_embeddings:
        tree["lm_head"] = {"kernel": jnp.asarray(get(head)).T}
    return _fill(config, tree)


def _fill(config: TransformerConfig, tree: dict[str, Any]) -> Params:
    """Checks ``tree`` against the parameter tree of ``config`` (names, shapes) and casts to param_dtype."""
    abstract = Policy(config).abstract_params()
    expected = nnx.to_flat_state(abstract)
    flat: dict[tuple, Any] = {}

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        else:
            flat[path] = node

    walk(tree, ())
    values = {}
    for path, variable in expected:
        name = "/".join(map(str, path))
        if path not in flat:
            raise ValueError(
                f"the checkpoint provides no value for parameter {name!r} of a {config.architecture!r} model"
            )
        value = flat.pop(path)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"parameter {name!r}: the checkpoint's tensor has shape {tuple(value.shape)}, "
                f"the config implies {tuple(variable.shape)}; is config.json the checkpoint's own?"
            )
        values[path] = jnp.asarray(value, dtype=config.param_dtype)
    if flat:
        extra = sorted("/".join(map(str, p)) for p in flat)
        raise ValueError(f"the checkpoint has tensors the {config.architecture!r} config does not expect: {extra}")
    pure: dict[Any, Any] = {}
    for path, value in values.items():
        node = pure
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    nnx.replace_by_pure_dict(abstract, pure)
    return abstract
