"""What a LISA / ROSALIA source folder says about itself, checked before and after its weights are read.

LISA's merge script (`merge_lora_weights_and_save_hf_model.py`) writes `config.json` (a LLaVA
config: the LLaMA hyper-parameters plus `mm_*` fields), the SentencePiece tokenizer
(`tokenizer.model` + `added_tokens.json` with `[SEG]`, `<im_start>`, `<im_end>`) and the
weights. This module reads the config and the tokenizer (cheap, first), and checks the
weights' shapes against the config once they are read.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from rosalia.model.config import SEG_TOKEN, ModelError

log = logging.getLogger(__name__)

LISA_PROJ = "model.mm_projector."
#: LISA-7B-v1's LLaMA values, used only when the source has no config.json.
LISA_7B_V1_TEXT: dict[str, Any] = dict(rms_norm_eps=1e-6, max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None)
#: config.json keys that drive the LLaMA config of the converted model.
LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "rms_norm_eps", "max_position_embeddings", "rope_theta", "rope_scaling", "hidden_act", "attention_bias",
              "mlp_bias", "head_dim")
_PROJ_ACT = {"linear": "linear", "mlp2x_gelu": "gelu"}


@dataclass
class SourceConfig:
    """The source's config.json (empty when it has none) and what follows from it."""

    raw: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def read(cls, folder: Path) -> "SourceConfig":
        f = folder / "config.json" if folder.is_dir() else None
        if f is None or not f.is_file():
            log.warning("the source has no config.json: assuming LISA-7B-v1's LLaMA values %s", LISA_7B_V1_TEXT)
            return cls()
        try:
            raw = json.loads(f.read_text())
        except ValueError as exc:
            raise ModelError(f"{f.name} is not valid JSON: {exc}") from exc
        raw = {**raw.get("text_config", {}), **{k: v for k, v in raw.items() if k != "text_config"}}
        return cls(raw, str(f.name))

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def use_im_start_end(self) -> bool:
        """`mm_use_im_start_end` (LISA-7B-v1 and ROSALIA: true; the default when there is no config)."""
        return bool(self.raw.get("mm_use_im_start_end", True))

    def prompt_style(self) -> str:
        return "llava_v1" if self.use_im_start_end else "llava_v1_no_im_tags"

    def text_kwargs(self) -> dict[str, Any]:
        """LlamaConfig keyword arguments from config.json (LISA-7B-v1's values where it is silent)."""
        kw = dict(LISA_7B_V1_TEXT)
        kw.update({k: self.raw[k] for k in LLAMA_KEYS if k in self.raw})
        if kw.get("rope_scaling") is None:
            kw.pop("rope_scaling", None)
        return kw

    def vision_feature_layer(self, default: int) -> int:
        return int(self.raw.get("mm_vision_select_layer", default))


def check_tokenizer(tok, style_tokens: tuple[str, ...], vocab_rows: int | None) -> int:
    """Check LISA's tokenizer (before any weight is read); the `[SEG]` id.

    `[SEG]` and each of `style_tokens` (`<im_start>`, `<im_end>`) must be one token each, and
    inside the `vocab_rows` the weights have (config.json `vocab_size`), i.e. trained rows.
    """
    vocab = tok.get_vocab()
    problems = []
    ids = {}
    for t in (SEG_TOKEN, *style_tokens):
        if t not in vocab:
            problems.append(f"{t} is not in the tokenizer")
            continue
        ids[t] = vocab[t]
        enc = tok(t, add_special_tokens=False)["input_ids"]
        if enc != [vocab[t]]:
            problems.append(f"{t} tokenises as {enc}, not as its own id {vocab[t]}")
        if vocab_rows is not None and vocab[t] >= vocab_rows:
            problems.append(f"{t} has id {vocab[t]} but the model has only {vocab_rows} embedding rows (config.json vocab_size)")
    if problems:
        raise ModelError("the tokenizer is not the one the checkpoint was trained with: " + "; ".join(problems)
                         + " (pass the source's own tokenizer folder with --tokenizer, or --prompt-style plain for a "
                           "checkpoint trained without image tags)")
    log.info("tokenizer checked: %s", ", ".join(f"{t}={i}" for t, i in ids.items()))
    return ids[SEG_TOKEN]


def projector_layout(sd: Mapping[str, torch.Tensor], cfg: SourceConfig) -> tuple[int, str]:
    """(number of Linear layers, activation) of the source's `mm_projector`.

    One Linear (`mm_projector.{weight,bias}`, LISA) or LLaVA-1.5's `mlp2x_gelu`
    (`mm_projector.{0,2}.*`, ROSALIA's fork can build it); anything else is an error naming the
    keys found.
    """
    keys = sorted(k for k in sd if k.startswith(LISA_PROJ))
    rest = {k[len(LISA_PROJ):] for k in keys}
    kind = cfg.get("mm_projector_type")
    if rest <= {"weight", "bias"} and "weight" in rest:
        layers, act = 1, "linear"
    elif rest <= {"0.weight", "0.bias", "2.weight", "2.bias"} and {"0.weight", "2.weight"} <= rest:
        layers, act = 2, "gelu"
    else:
        raise ModelError(f"unsupported mm_projector: keys found {keys or 'none'}; expected {LISA_PROJ}weight/bias "
                         f"(one Linear) or {LISA_PROJ}0.* and {LISA_PROJ}2.* (mlp2x_gelu)")
    if kind is not None and _PROJ_ACT.get(str(kind)) not in (None, act):
        raise ModelError(f"config.json mm_projector_type={kind!r} but the weights hold a {layers}-layer projector ({keys})")
    if kind is not None and str(kind) not in _PROJ_ACT:
        raise ModelError(f"unsupported mm_projector_type {kind!r} in config.json (supported: {sorted(_PROJ_ACT)})")
    return layers, act


def check_shapes(sd: Mapping[str, torch.Tensor], cfg: SourceConfig) -> None:
    """config.json against the weights' shapes; a mismatch is an error naming both."""
    if not cfg.raw:
        return
    emb = sd["model.embed_tokens.weight"]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    q = sd.get("model.layers.0.self_attn.q_proj.weight")
    k = sd.get("model.layers.0.self_attn.k_proj.weight")
    gate = sd.get("model.layers.0.mlp.gate_proj.weight")
    proj = sd.get(LISA_PROJ + "weight", sd.get(LISA_PROJ + "0.weight"))
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size") // heads if heads and cfg.get("hidden_size") else None)
    checks = [
        ("vocab_size", cfg.get("vocab_size"), "model.embed_tokens.weight", tuple(emb.shape), int(emb.shape[0])),
        ("hidden_size", cfg.get("hidden_size"), "model.embed_tokens.weight", tuple(emb.shape), int(emb.shape[1])),
        ("num_hidden_layers", cfg.get("num_hidden_layers"), "model.layers.*", f"{len(layers)} layers", len(layers)),
    ]
    if gate is not None:
        checks.append(("intermediate_size", cfg.get("intermediate_size"), "model.layers.0.mlp.gate_proj.weight",
                       tuple(gate.shape), int(gate.shape[0])))
    if q is not None and heads and head_dim:
        checks.append(("num_attention_heads", heads, "model.layers.0.self_attn.q_proj.weight", tuple(q.shape),
                       int(q.shape[0]) // head_dim))
    if k is not None and head_dim:
        checks.append(("num_key_value_heads", cfg.get("num_key_value_heads", heads), "model.layers.0.self_attn.k_proj.weight",
                       tuple(k.shape), int(k.shape[0]) // head_dim))
    if proj is not None:
        checks.append(("mm_hidden_size", cfg.get("mm_hidden_size"), "the mm_projector's first weight", tuple(proj.shape),
                       int(proj.shape[1])))
    bad = [f"config.json {name}={want} but {key} is {shape}" for name, want, key, shape, got in checks
           if want is not None and int(want) != got]
    if bad:
        raise ModelError("config.json does not fit the weights: " + "; ".join(bad))
