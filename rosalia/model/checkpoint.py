"""Checkpoints in Hugging Face format: `llava/`, `sam/` (save_pretrained folders, LoRA merged),
`tokenizer/`, `heads.safetensors` ([SEG] projection + presence head) and `rosalia.json`.

A checkpoint may live on a local disk or in the store (s3://); remote folders go through a
temporary local copy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rosalia.model.config import ModelError
from rosalia.model.modeling import RosaliaModel

if TYPE_CHECKING:
    from ils.config import ModelConfig

log = logging.getLogger(__name__)
SPEC_FILE = "rosalia.json"
HEADS_FILE = "heads.safetensors"


def merged_llava_state_dict(llava: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LLaVA state dict with LoRA deltas merged into the base weights and LoRA keys dropped."""
    from peft.tuners.lora import LoraLayer

    sd = {k.replace(".base_layer.", "."): v.detach() for k, v in llava.state_dict().items() if "lora_" not in k}
    for name, mod in llava.named_modules():
        if isinstance(mod, LoraLayer):
            for adapter in mod.active_adapters:
                if adapter in mod.lora_A:
                    key = f"{name}.weight"
                    sd[key] = sd[key] + mod.get_delta_weight(adapter).to(sd[key].dtype)
    return {k: v.contiguous().cpu() for k, v in sd.items()}


def _write_local(model: RosaliaModel, out: Path) -> None:
    from safetensors.torch import save_file

    (out / "llava").mkdir(parents=True, exist_ok=True)
    model.llava.config.save_pretrained(out / "llava")
    save_file(merged_llava_state_dict(model.llava), str(out / "llava" / "model.safetensors"), metadata={"format": "pt"})
    model.sam.save_pretrained(out / "sam")
    model.tokenizer.save_pretrained(out / "tokenizer")
    heads = {f"text_hidden_fcs.{k}": v for k, v in model.text_hidden_fcs.state_dict().items()}
    if model.presence_head is not None:
        heads.update({f"presence_head.{k}": v for k, v in model.presence_head.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(out / HEADS_FILE))
    (out / SPEC_FILE).write_text(json.dumps(model.spec, indent=2))


def _target(dest: str, store) -> tuple["object", str]:
    from ils.store import Store

    if store is None:
        return Store(dest), ""
    return store, (store.relative(dest) if ("://" in dest or dest.startswith("/")) else dest.strip("/"))


def save_checkpoint(model: RosaliaModel, dest: str, store=None) -> str:
    """Write `model` to a local folder, or into a store (an s3:// `dest`, or `dest` relative to `store`)."""
    if "://" not in dest and store is None:
        _write_local(model, Path(dest))
        return str(Path(dest).resolve())
    store, rel = _target(dest, store)
    with tempfile.TemporaryDirectory() as tmp:
        _write_local(model, Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                name = path.relative_to(tmp).as_posix()
                store.write_bytes(f"{rel}/{name}" if rel else name, path.read_bytes())
    return store.uri(rel)


def _local_copy(src: str, store=None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    if "://" not in src and store is None:
        p = Path(src)
        if not (p / SPEC_FILE).is_file():
            raise ModelError(f"not a ROSALIA checkpoint (no {SPEC_FILE}): {src}")
        return p, None
    store, rel = _target(src, store)
    files = store.list(rel)
    if f"{rel}/{SPEC_FILE}".lstrip("/") not in files:
        raise ModelError(f"not a ROSALIA checkpoint (no {SPEC_FILE}): {src}")
    tmp = tempfile.TemporaryDirectory(prefix="rosalia-ckpt-")
    for f in files:
        target = Path(tmp.name) / (f[len(rel) + 1 :] if rel else f)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(f))
    return Path(tmp.name), tmp


def load_model(src: str, model_cfg: "ModelConfig | None" = None, store=None) -> RosaliaModel:
    """Load a checkpoint written by `save_checkpoint` (or `ils convert-lisa`); eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlavaForConditionalGeneration, SamModel

    path, tmp = _local_copy(src, store)
    try:
        spec = json.loads((path / SPEC_FILE).read_text())
        if model_cfg is not None:  # runtime knobs may be overridden by the config
            spec["presence_threshold"] = model_cfg.presence_threshold
            spec["max_new_tokens"] = model_cfg.max_new_tokens
        dtype = torch.bfloat16 if model_cfg is not None and model_cfg.dtype == "bfloat16" else torch.float32
        llava = LlavaForConditionalGeneration.from_pretrained(path / "llava", dtype=dtype)
        sam = SamModel.from_pretrained(path / "sam", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        model = RosaliaModel(llava, sam, tokenizer, spec)
        heads = load_file(str(path / HEADS_FILE))
        missing, unexpected = model.load_state_dict(heads, strict=False)
        bad = [k for k in missing if k.startswith(("text_hidden_fcs", "presence_head"))]
        if bad or unexpected:
            raise ModelError(f"checkpoint heads do not fit: missing {bad}, unexpected {unexpected}")
        model.to(dtype)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"cannot load checkpoint {src}: {exc}") from exc
    finally:
        if tmp is not None:
            tmp.cleanup()
    model.eval()
    log.info("loaded ROSALIA %s checkpoint from %s", spec.get("size"), os.path.basename(str(src).rstrip("/")))
    return model
