"""Import an original LISA / ROSALIA checkpoint into the rosalia HF layout (`ils convert-lisa`).

LISA (dvlab-research/LISA, ROSALIA is a fork) saves one `LISAForCausalLM` state dict:

    model.embed_tokens.weight, model.layers.N.*, model.norm.weight, lm_head.weight     LLaMA
    model.mm_projector.{weight,bias}                                                  one Linear
    model.vision_tower.vision_tower.vision_model.*                                    CLIP (often
        left out by LISA's merge script: pass the CLIP weights with `vision_tower=`)
    model.visual_model.{image_encoder,prompt_encoder,mask_decoder}.*                  original SAM
    model.text_hidden_fcs.0.{0,2}.{weight,bias}                                       [SEG] projection

Target: `RosaliaModel` keys (`llava.*` = `LlavaForConditionalGeneration`, `sam.*` = `SamModel`,
`text_hidden_fcs.*`, `presence_head.*`). The key map is derived from the module structure of a
model built on the meta device, so layout changes in transformers or in `RosaliaModel` show up as
a clear error instead of a silently wrong import. SAM names follow transformers'
`convert_sam_to_hf.py`. LISA's single projector Linear goes into `linear_1` of HF's two-layer
projector with `projector_hidden_act="linear"` and an identity `linear_2`; a two-layer
`mlp2x_gelu` projector (`mm_projector.{0,2}`, which ROSALIA's fork can build) maps onto
`linear_1`/`linear_2` with GELU. Order of work: the source's config.json and tokenizer are read
and checked first (`rosalia.model.lisa_source`), then the weights, whose shapes must fit the
config. config.json drives the LLaMA hyper-parameters (RMS-norm epsilon, context length, rope,
heads) and the CLIP feature layer; the converted checkpoint records `prompt_style` (`llava_v1`:
LLaVA's v1 conversation with `<im_start><image><im_end>`, see `rosalia.prompting`). LISA has no presence
head: it is initialised *open* (constant logit `OPEN_LOGIT`, p(present) ~ 1) and marked
`"presence_head": "untrained, open"` in rosalia.json, so eval/serve use the ungated protocol
(mask = logit > 0, present = mask non-empty) until the head is trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from rosalia.model.config import IMAGE_TOKEN, ModelError
from rosalia.model.lisa_source import LISA_PROJ, SourceConfig, check_shapes, check_tokenizer, projector_layout

if TYPE_CHECKING:
    from ils.config import ModelConfig
    from rosalia.model.modeling import RosaliaModel

log = logging.getLogger(__name__)

PRESENCE_UNTRAINED = "untrained, open"
OPEN_LOGIT = 8.0  # sigmoid(8) = 0.99966: the gate is open for any threshold below that
LISA_SAM = "model.visual_model."
LISA_CLIP = "model.vision_tower.vision_tower.vision_model."
LISA_SEG_FC = "model.text_hidden_fcs.0."
LISA_LM_HEAD = "lm_head.weight"
#: Source keys that carry no weights the HF model needs.
IGNORED = re.compile(r"(rotary_emb\.inv_freq|pixel_mean|pixel_std|position_ids)$")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")

# Original SAM -> HF SamModel, in the order transformers' convert_sam_to_hf.py applies them.
SAM_TO_HF: tuple[tuple[str, str], ...] = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
)
_HYPER = re.compile(r".*\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+).*")
_HYPER_TO_HF = {0: ("layers.0", "proj_in"), 1: ("layers.1", "layers.0"), 2: ("layers.2", "proj_out")}

# HF SamModel -> original SAM (the inverse, applied in this order).
HF_TO_SAM: tuple[tuple[str, str], ...] = (
    ("vision_encoder.", "image_encoder."),
    ("patch_embed.projection", "patch_embed.proj"),
    ("neck.conv1", "neck.0"), ("neck.layer_norm1", "neck.1"), ("neck.conv2", "neck.2"), ("neck.layer_norm2", "neck.3"),
    ("image_encoder.layers.", "image_encoder.blocks."),
    ("mask_embed.conv1", "mask_downscaling.0"), ("mask_embed.layer_norm1", "mask_downscaling.1"),
    ("mask_embed.conv2", "mask_downscaling.3"), ("mask_embed.layer_norm2", "mask_downscaling.4"),
    ("mask_embed.conv3", "mask_downscaling.6"),
    ("point_embed", "point_embeddings"),
    ("shared_embedding.positional_embedding", "pe_layer.positional_encoding_gaussian_matrix"),
    ("upscale_conv1", "output_upscaling.0"), ("upscale_layer_norm", "output_upscaling.1"),
    ("upscale_conv2", "output_upscaling.3"),
    (".layer_norm", ".norm"),
)
_MLP_FROM_HF = re.compile(r"(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.(proj_in|proj_out|layers\.(\d+))\.")


def sam_key_to_hf(key: str) -> str:
    """Original SAM key (relative to the SAM module) -> HF `SamModel` key (convert_sam_to_hf rules)."""
    for old, new in SAM_TO_HF:
        if old in key:
            key = key.replace(old, new)
    m = _HYPER.match(key)
    if m:
        old, new = _HYPER_TO_HF.get(int(m.group(2)), (None, None))
        if old is None:
            raise ModelError(f"unexpected SAM hypernetwork layer in {key!r}")
        key = key.replace(old, new)
    return key


def sam_key_from_hf(key: str) -> str:
    """HF `SamModel` key -> original SAM key (3-layer SAM MLPs)."""
    if key == "shared_image_embedding.positional_embedding":
        return "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

    def mlp(m: re.Match) -> str:
        part = m.group(2)
        idx = 0 if part == "proj_in" else 2 if part == "proj_out" else int(m.group(3)) + 1
        return f"{m.group(1)}.layers.{idx}."

    key = _MLP_FROM_HF.sub(mlp, key)
    for old, new in HF_TO_SAM:
        key = key.replace(old, new)
    return key


class LisaKeyMap:
    """LISA key <-> `RosaliaModel` key, derived from the target model's own key set."""

    def __init__(self, target_keys: Iterable[str], proj_layers: int = 1):
        keys = list(target_keys)
        self.keys = keys
        self.proj_layers = proj_layers  # 1: LISA's Linear (-> linear_1); 2: mlp2x_gelu (0 -> linear_1, 2 -> linear_2)

        def find(suffix: str, what: str) -> str:
            hits = [k for k in keys if k.endswith(suffix)]
            if len(hits) != 1:
                raise ModelError(f"cannot locate {what} in the target model (keys ending {suffix!r}: {hits})")
            return hits[0][: -len(suffix)]

        self.lm = find("embed_tokens.weight", "the language model")  # e.g. llava.model.language_model.
        self.lm_head = find("lm_head.weight", "lm_head") + "lm_head.weight"
        self.proj = find("multi_modal_projector.linear_1.weight", "the projector") + "multi_modal_projector."
        emb = find("embeddings.patch_embedding.weight", "the CLIP tower")  # .../vision_tower.[vision_model.]
        self.clip = emb
        self.sam = "sam."
        self.seg_fc = "text_hidden_fcs."
        self.presence = "presence_head."

    # LISA -> target ------------------------------------------------------------------------
    def to_hf(self, key: str) -> str | None:
        """Target key of LISA `key`; None for keys that carry nothing the target needs."""
        if IGNORED.search(key):
            return None
        if key.startswith(LISA_SAM):
            return self.sam + sam_key_to_hf(key[len(LISA_SAM):])
        if key.startswith(LISA_SEG_FC):
            return self.seg_fc + key[len(LISA_SEG_FC):]
        if key.startswith(LISA_PROJ):
            rest = key[len(LISA_PROJ):]
            if self.proj_layers == 2:
                layer, _, rest = rest.partition(".")
                return self.proj + {"0": "linear_1.", "2": "linear_2."}.get(layer, f"?{layer}.") + rest
            return self.proj + "linear_1." + rest
        if key.startswith(LISA_CLIP):
            return self.clip + key[len(LISA_CLIP):]
        if key == LISA_LM_HEAD:
            return self.lm_head
        if key.startswith("model."):
            return self.lm + key[len("model."):]
        return "?" + key  # no counterpart: reported as unexpected

    # target -> LISA ------------------------------------------------------------------------
    def to_lisa(self, key: str) -> str | None:
        """LISA key of target `key`; None for weights LISA does not have (linear_2, presence head)."""
        if key.startswith(self.presence) or self.synthesized(key):
            return None
        for hf, lisa in (("linear_1.", "0."), ("linear_2.", "2.")):
            if key.startswith(self.proj + hf):
                return LISA_PROJ + (lisa if self.proj_layers == 2 else "") + key[len(self.proj + hf):]
        if key.startswith(self.sam):
            return LISA_SAM + sam_key_from_hf(key[len(self.sam):])
        if key.startswith(self.seg_fc):
            return LISA_SEG_FC + key[len(self.seg_fc):]
        if key.startswith(self.clip):
            return LISA_CLIP + key[len(self.clip):]
        if key == self.lm_head:
            return LISA_LM_HEAD
        if key.startswith(self.lm):
            return "model." + key[len(self.lm):]
        raise ModelError(f"no LISA name for model key {key!r}")

    def synthesized(self, key: str) -> bool:
        """Target keys the converter fills itself (not read from the source)."""
        return key.startswith(self.presence) or (self.proj_layers == 1 and key.startswith(self.proj + "linear_2."))


# -- export ------------------------------------------------------------------------------------
def to_lisa_state_dict(model: "RosaliaModel") -> dict[str, torch.Tensor]:
    """`model`'s weights under the original LISA names (LoRA merged).

    A linear projector is folded to LISA's one Linear; a GELU one is written as `mlp2x_gelu`
    (`mm_projector.{0,2}`). The presence head is dropped (LISA has none). Other projector
    activations are a ModelError.
    """
    from rosalia.model.checkpoint import merged_llava_state_dict

    act = str(model.llava.config.projector_hidden_act or "linear").lower()
    if act not in ("linear", "identity", "gelu"):
        raise ModelError(f"projector activation is {act!r}: LISA's projector is one Linear ('linear') or mlp2x_gelu ('gelu')")
    sd = {f"llava.{k}": v for k, v in merged_llava_state_dict(model.llava).items()}
    sd.update({f"sam.{k}": v.detach().cpu() for k, v in model.sam.state_dict().items()})
    sd.update({f"text_hidden_fcs.{k}": v.detach().cpu() for k, v in model.text_hidden_fcs.state_dict().items()})
    kmap = LisaKeyMap(sd, proj_layers=2 if act == "gelu" else 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = kmap.to_lisa(key)
        if name is not None and name not in out:
            out[name] = value.detach().clone()
    if act == "gelu":
        return out
    w1, b1 = sd[kmap.proj + "linear_1.weight"], sd.get(kmap.proj + "linear_1.bias")
    w2, b2 = sd[kmap.proj + "linear_2.weight"], sd.get(kmap.proj + "linear_2.bias")
    f = torch.float64
    out[LISA_PROJ + "weight"] = (w2.to(f) @ w1.to(f)).to(w1.dtype)
    bias = (w2.to(f) @ b1.to(f) if b1 is not None else 0) + (b2.to(f) if b2 is not None else 0)
    if isinstance(bias, torch.Tensor):
        out[LISA_PROJ + "bias"] = bias.to(w1.dtype)
    return out


# -- reading the source ------------------------------------------------------------------------
def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (legacy format): no mmap
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot read {path.name} as a torch state dict: {exc}") from exc
    except Exception as exc:  # pickle with non-tensor objects, corrupt file
        raise ModelError(f"cannot read {path.name} as a torch state dict: {exc}") from exc
    for wrapper in ("module", "state_dict", "model"):  # DeepSpeed / Lightning style wrappers
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict) and not any(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path.name} is not a state dict of tensors")
    return obj


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: via an index json if there is one, else all of them."""
    for index in sorted(folder.glob("*.index.json")):
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"{index.name} names shards that are missing: {missing}")
        return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelError(f"no weights (*.bin, *.pt, *.safetensors) in {folder}")
    return files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """One state dict from a weight file or a (sharded) checkpoint folder."""
    files = weight_files(path) if path.is_dir() else [path]
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(_load_file(f))
    return sd


def local_copy(src: str, store=None, tmp_root: str | None = None,
               skip_weights: bool = False) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A local path for `src` (a path, or an s3:// file or folder fetched through `ils.store.Store`).

    `skip_weights`: fetch only the small files (config.json, tokenizer) of a remote folder.
    """
    if "://" not in src or src.startswith("file://"):
        p = Path(src.removeprefix("file://")).expanduser()
        if not p.exists():
            raise ModelError(f"no such file or folder: {src}")
        return p, None
    from ils.store import Store

    st = store.child(src) if store is not None else Store(src)
    tmp = tempfile.TemporaryDirectory(prefix="convert-lisa-", dir=tmp_root)
    base = Path(tmp.name)
    files = st.list("")
    if not files:  # a single file: its parent is the store
        parent, name = src.rstrip("/").rsplit("/", 1)
        st = store.child(parent) if store is not None else Store(parent)
        if not st.is_file(name):
            tmp.cleanup()
            raise ModelError(f"no such file or folder: {src}")
        files, base = [name], base / "file"
    if skip_weights:
        files = [f for f in files if not f.endswith(WEIGHT_SUFFIXES)]
        if not files or base.name == "file":
            return Path(tmp.name), tmp
    for rel in files:
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with st.fs.open_input_stream(st.path(rel)) as fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
    return (base / files[0] if base.name == "file" else base), tmp


def check_lora(sd: Mapping[str, torch.Tensor]) -> None:
    lora = [k for k in sd if ".lora_" in k or "lora_embedding" in k]
    if lora:
        raise ModelError(
            f"unmerged LoRA checkpoint ({len(lora)} LoRA tensors, e.g. {lora[0]!r}); the LoRA scaling is not in the "
            "state dict, so it cannot be merged here: merge it first (LISA's merge_lora_weights_and_save_hf_model.py) "
            "and convert the merged checkpoint"
        )


def _strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("base_model.model.", "module."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# -- building the target -----------------------------------------------------------------------
def _infer_model_cfg(sd: Mapping[str, torch.Tensor], model_cfg: "ModelConfig", size: str) -> "ModelConfig":
    emb = sd.get("model.embed_tokens.weight")
    if emb is None:
        raise ModelError("not a LISA checkpoint: no model.embed_tokens.weight")
    sam_pos = sd.get(LISA_SAM + "image_encoder.pos_embed")
    if size == "auto":  # LISA's real shapes: a 4096-wide LLM or SAM ViT-H (1280 wide; the LLM then per config.json)
        size = "7b" if emb.shape[1] == 4096 or (sam_pos is not None and sam_pos.shape[-1] == 1280) else "tiny"
    if size == "7b":
        return dataclasses.replace(model_cfg, size="7b", image_size=1024, clip_size=224)
    if size != "tiny":
        raise ModelError(f"unknown size {size!r}; expected tiny, 7b or auto")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    pos = sd.get(LISA_SAM + "image_encoder.pos_embed")
    clip_pos = sd.get(LISA_CLIP + "embeddings.position_embedding.weight")
    kw: dict[str, Any] = dict(size="tiny", hidden_size=int(emb.shape[1]), num_layers=max(layers) + 1 if layers else 0)
    if pos is not None:
        kw["image_size"] = int(pos.shape[1]) * 16
    if clip_pos is not None:
        kw["clip_size"] = int(round(math.sqrt(clip_pos.shape[0] - 1))) * 16
    return dataclasses.replace(model_cfg, **kw)


def _tokenizer(path: str | None, src_path: Path, size: str, store=None):
    """The source's tokenizer (its own folder, or `path`); the word tokenizer for `--size tiny` without one."""
    from transformers import AutoTokenizer

    from rosalia.model.config import build_word_tokenizer

    if path is None and src_path.is_dir() and any((src_path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        path = str(src_path)
    if path is None:
        if size == "tiny":
            return build_word_tokenizer()
        raise ModelError("no tokenizer: the source folder has none; pass --tokenizer PATH (LISA's tokenizer folder)")
    local, tmp = local_copy(path, store)
    try:
        return AutoTokenizer.from_pretrained(str(local))
    except (OSError, ValueError, ImportError) as exc:
        hint = " (LISA ships a SentencePiece tokenizer.model: is the `sentencepiece` package installed?)" if (
            local / "tokenizer.model").is_file() else ""
        raise ModelError(f"cannot load the tokenizer {path}: {exc}{hint}") from exc
    finally:
        if tmp is not None:
            tmp.cleanup()


def _grow_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` with rows appended up to `n` (initialised at the mean row, as HF's resize does)."""
    if t.shape[0] >= n:
        return t
    extra = t.float().mean(0, keepdim=True).expand(n - t.shape[0], -1).to(t.dtype)
    return torch.cat([t, extra], 0)


def convert(
    src: str, dst: str, model_cfg: "ModelConfig", size: str = "auto", tokenizer: str | None = None,
    vision_tower: str | None = None, dtype: str = "keep", store=None, prompt_style: str = "auto",
) -> dict[str, Any]:
    """Convert the LISA checkpoint at `src` into a rosalia checkpoint folder `dst`; a summary dict.

    `prompt_style`: "auto" (from config.json's `mm_use_im_start_end`: `llava_v1`, LISA's and
    ROSALIA's training format) or a name in `rosalia.prompting.STYLES`.
    """
    from rosalia.model.config import add_special_tokens
    from rosalia.prompting import get_style

    # 1. config.json and the tokenizer: cheap, checked before any weight is read (or fetched)
    meta_path, meta_tmp = local_copy(src, store, skip_weights=True)
    try:
        scfg = SourceConfig.read(meta_path)
        style = get_style(scfg.prompt_style() if prompt_style == "auto" else prompt_style)
        tok = _tokenizer(tokenizer, meta_path, size, store)
    finally:
        if meta_tmp is not None:
            meta_tmp.cleanup()
    vocab_rows = scfg.get("vocab_size")
    seg_id = check_tokenizer(tok, style.extra_tokens, int(vocab_rows) if vocab_rows else None)
    # 2. the weights
    src_path, tmp = local_copy(src, store)
    try:
        sd = _strip_wrappers(read_state_dict(src_path))
        check_lora(sd)
        if vision_tower:
            _add_vision_tower(sd, vision_tower, store)
        cfg = _infer_model_cfg(sd, model_cfg, size)
        check_shapes(sd, scfg)
        check_tokenizer(tok, style.extra_tokens, int(sd["model.embed_tokens.weight"].shape[0]))
        add_special_tokens(tok)  # <image> (LISA splices image features in place of an index, so it has none)
        dst = dst.removeprefix("file://")
        summary = _write(sd, Path(dst) if "://" not in dst else None, dst, cfg, tok, dtype, store, src, scfg, style.name)
        summary["seg_token_id"] = seg_id
        return summary
    finally:
        if tmp is not None:
            tmp.cleanup()


def _add_vision_tower(sd: dict[str, torch.Tensor], vision_tower: str, store) -> None:
    """Add the CLIP weights at `vision_tower` that `sd` lacks (LISA's merge script drops the tower)."""
    vt_path, vt_tmp = local_copy(vision_tower, store)
    try:
        clip = _strip_wrappers(read_state_dict(vt_path))
    finally:
        if vt_tmp is not None:
            vt_tmp.cleanup()
    added = 0
    for k, v in clip.items():
        rest = k[len(LISA_CLIP):] if k.startswith(LISA_CLIP) else k[len("vision_model."):] if k.startswith("vision_model.") else None
        if rest is not None and LISA_CLIP + rest not in sd:
            sd[LISA_CLIP + rest] = v
            added += 1
    if not added:
        raise ModelError(f"{vision_tower}: no CLIP vision weights (vision_model.*) that the source lacks")


def _target_model(cfg: "ModelConfig", tok, vocab: int, scfg: SourceConfig, proj_act: str, style: str):
    """(RosaliaModel on the meta device, its llava config, its sam config) for `cfg` with `vocab` rows.

    The LLaMA hyper-parameters come from the source's config.json (`scfg`), the shapes not in it
    from `cfg`'s size.
    """
    from transformers import LlamaConfig, LlavaForConditionalGeneration, SamModel

    from rosalia.model.config import hf_configs, shapes_for
    from rosalia.model.modeling import RosaliaModel, spec_from

    shapes = shapes_for(cfg, vocab_size=vocab)
    shapes = dataclasses.replace(shapes, vocab_size=vocab)
    llava_cfg, sam_cfg = hf_configs(shapes, tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id)
    t = llava_cfg.text_config
    kw = {k: getattr(t, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "max_position_embeddings")}
    kw.update(scfg.text_kwargs())
    llava_cfg.text_config = LlamaConfig(**kw, vocab_size=vocab, pad_token_id=t.pad_token_id, bos_token_id=None,
                                        eos_token_id=None, tie_word_embeddings=False)
    llava_cfg.projector_hidden_act = proj_act  # LISA: one Linear ("linear", identity linear_2); mlp2x_gelu: "gelu"
    llava_cfg.vision_feature_layer = scfg.vision_feature_layer(llava_cfg.vision_feature_layer)
    spec = spec_from(cfg, shapes)
    spec["presence_head"] = PRESENCE_UNTRAINED if cfg.presence_head else False
    spec["prompt_style"] = style
    with torch.device("meta"):
        model = RosaliaModel(LlavaForConditionalGeneration(llava_cfg), SamModel(sam_cfg), tok, spec)
    return model, llava_cfg, sam_cfg


def _write(sd, out: Path | None, dst: str, cfg, tok, dtype: str, store, src: str, scfg: SourceConfig,
           style: str) -> dict[str, Any]:
    from safetensors.torch import save_file

    from rosalia.model.checkpoint import HEADS_FILE, SPEC_FILE

    emb = sd["model.embed_tokens.weight"]
    vocab = max(int(emb.shape[0]), len(tok))
    proj_layers, proj_act = projector_layout(sd, scfg)
    model, llava_cfg, sam_cfg = _target_model(cfg, tok, vocab, scfg, proj_act, style)
    target = {k: v for k, v in model.state_dict().items()}
    kmap = LisaKeyMap(target, proj_layers)
    # embeddings / lm_head grow when the tokenizer added tokens (<image>)
    grown = vocab - int(emb.shape[0])
    for k in ("model.embed_tokens.weight", LISA_LM_HEAD):
        if k in sd:
            sd[k] = _grow_rows(sd[k], vocab)

    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        hf = kmap.to_hf(key)
        if hf is None:
            continue
        if hf not in target:
            unexpected.append(key)
            continue
        mapped[hf] = value
    # SAM's tied positional embedding: one source tensor, two target keys
    for k in target:
        if k not in mapped and k.endswith("shared_image_embedding.positional_embedding"):
            alt = k.replace("shared_image_embedding.", "prompt_encoder.shared_embedding.")
            if alt in mapped:
                mapped[k] = mapped[alt]
    missing = sorted(kmap.to_lisa(k) or k for k in target if k not in mapped and not kmap.synthesized(k))
    wrong = sorted(
        f"{kmap.to_lisa(k)}: {tuple(mapped[k].shape)} != {tuple(v.shape)}"
        for k, v in target.items() if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    )
    problems = []
    if missing:
        hint = " (LISA's merge script drops the CLIP tower: pass the CLIP weights with --vision-tower)" if any(
            m.startswith(LISA_CLIP) for m in missing) else ""
        problems.append(f"{len(missing)} missing keys{hint}: {_short(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} keys with wrong shapes for size {cfg.size}: {_short(wrong)}")
    if problems:
        raise ModelError("the checkpoint does not fit the ROSALIA model: " + "; ".join(problems))
    if unexpected:
        log.warning("ignoring %d source keys with no place in the model: %s", len(unexpected), _short(sorted(unexpected)))

    # synthesized weights: identity linear_2, open presence head
    src_dtype = mapped[kmap.proj + "linear_1.weight"].dtype
    out_dtype = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    for k, v in target.items():
        if kmap.synthesized(k) and k.startswith(kmap.proj + "linear_2."):
            mapped[k] = torch.eye(v.shape[0], dtype=src_dtype) if k.endswith("weight") else torch.zeros(v.shape, dtype=src_dtype)
    heads = {k: v for k, v in mapped.items() if k.startswith(kmap.seg_fc)}
    if model.presence_head is not None:
        heads.update({kmap.presence + k: v for k, v in open_presence_head(model.presence_head).items()})

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.to(out_dtype) if out_dtype is not None and t.is_floating_point() else t
        return t.contiguous()

    llava_sd, sam_sd = {}, {}
    seen: set[int] = set()
    for k, v in mapped.items():
        if k.startswith("llava."):
            llava_sd[k[len("llava."):]] = v
        elif k.startswith("sam."):
            sam_sd[k[len("sam."):]] = v
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="convert-lisa-out-")
        out = Path(tmp.name)
    try:
        (out / "llava").mkdir(parents=True, exist_ok=True)
        (out / "sam").mkdir(parents=True, exist_ok=True)
        llava_cfg.save_pretrained(out / "llava")
        sam_cfg.save_pretrained(out / "sam")

        def tensors(d):  # safetensors refuses shared storage: clone repeats
            res = {}
            for k, v in d.items():
                v = cast(v)
                if v.data_ptr() in seen:
                    v = v.clone()
                seen.add(v.data_ptr())
                res[k] = v
            return res

        save_file(tensors(llava_sd), str(out / "llava" / "model.safetensors"), metadata={"format": "pt"})
        save_file(tensors(sam_sd), str(out / "sam" / "model.safetensors"), metadata={"format": "pt"})
        save_file(tensors(heads), str(out / HEADS_FILE))
        tok.save_pretrained(out / "tokenizer")
        spec = dict(model.spec)
        spec["converted_from"] = {"source": src, "format": "lisa", "vocab_added_rows": grown,
                                  "config_json": scfg.path is not None, "projector_layers": proj_layers}
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        uri = str(out.resolve())
        if tmp is not None:
            uri = _upload(out, dst, store)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"out": uri, "size": cfg.size, "vocab": vocab, "vocab_added_rows": grown, "ignored_keys": len(unexpected),
            "presence_head": spec["presence_head"], "prompt_style": style, "projector_layers": proj_layers,
            "tensors": len(mapped) + len(heads)}


def _upload(folder: Path, dst: str, store) -> str:
    from ils.store import Store

    st = store.child(dst) if store is not None else Store(dst)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            st.fs.create_dir(st.path(rel).rsplit("/", 1)[0], recursive=True)
            with open(path, "rb") as fin, st.fs.open_output_stream(st.path(rel)) as fout:
                shutil.copyfileobj(fin, fout, 16 << 20)
    return st.root_uri


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def open_presence_head(head: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict for `head` (built on any device) whose output is the constant `OPEN_LOGIT`.

    Hidden layers get their default random init (so the head can still be trained); the last
    Linear gets zero weights and bias `OPEN_LOGIT`.
    """
    import copy

    real = copy.deepcopy(head).to_empty(device="cpu").float()
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        for mod in real.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
    linears = [m for m in real.modules() if isinstance(m, torch.nn.Linear)]
    if not linears or linears[-1].out_features != 1:
        raise ModelError("presence head: expected a final Linear with one output")
    with torch.no_grad():
        linears[-1].weight.zero_()
        if linears[-1].bias is None:
            raise ModelError("presence head: the final Linear needs a bias to be opened")
        linears[-1].bias.fill_(OPEN_LOGIT)
    return {k: v.detach().contiguous() for k, v in real.state_dict().items()}


def presence_untrained(model) -> bool:
    """Whether `model`'s presence head is an untrained open gate (a converted LISA checkpoint)."""
    return isinstance(model.spec.get("presence_head"), str) and model.spec["presence_head"].startswith("untrained")
