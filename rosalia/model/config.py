"""Model shapes: `tiny` (CPU, random init) and `7b` (LISA-7B-v1 shapes), plus the offline tokenizer."""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ils.errors import UserError

if TYPE_CHECKING:
    from ils.config import ModelConfig

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

# CLIP and SAM normalisation (pixel values in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


class ModelError(UserError, ValueError):
    """The model configuration or checkpoint is unusable."""


@dataclass(frozen=True)
class Shapes:
    """Everything needed to build the HF configs of one size."""

    size: str
    vocab_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    clip_hidden: int
    clip_layers: int
    clip_heads: int
    clip_intermediate: int
    clip_image: int
    clip_patch: int
    sam_hidden: int
    sam_layers: int
    sam_heads: int
    sam_global_attn: tuple[int, ...]
    sam_window: int
    sam_image: int
    sam_patch: int
    sam_out: int  # output_channels = prompt/decoder hidden size (256 in SAM)
    sam_decoder_mlp: int
    sam_decoder_heads: int
    vision_feature_layer: int = -2


def shapes_for(model_cfg: "ModelConfig", vocab_size: int = 0) -> Shapes:
    """Shapes of `model_cfg.size`; the tiny model takes image/clip/hidden/layers from the config."""
    if model_cfg.size == "tiny":
        h = model_cfg.hidden_size
        if model_cfg.image_size % 16 or model_cfg.clip_size % 16:
            raise ModelError("tiny model: model.image_size and model.clip_size must be multiples of 16")
        if model_cfg.sam_patch not in (4, 8, 16) or model_cfg.image_size % model_cfg.sam_patch:
            raise ModelError("tiny model: model.sam_patch must be 4, 8 or 16 and divide model.image_size")
        if model_cfg.sam_channels < 16 or model_cfg.sam_channels % 16:
            raise ModelError("tiny model: model.sam_channels must be a multiple of 16 (at least 16)")
        if model_cfg.sam_hidden < 16 or model_cfg.sam_hidden % 16 or model_cfg.sam_layers < 1:
            raise ModelError("tiny model: model.sam_hidden must be a multiple of 16 (at least 16) and model.sam_layers >= 1")
        return Shapes(
            size="tiny", vocab_size=vocab_size, text_hidden=h, text_layers=model_cfg.num_layers,
            text_heads=4, text_intermediate=2 * h, clip_hidden=h, clip_layers=2, clip_heads=4,
            clip_intermediate=2 * h, clip_image=model_cfg.clip_size, clip_patch=16, sam_hidden=model_cfg.sam_hidden,
            sam_layers=model_cfg.sam_layers, sam_heads=2, sam_global_attn=(1,), sam_window=4, sam_image=model_cfg.image_size,
            sam_patch=model_cfg.sam_patch, sam_out=model_cfg.sam_channels, sam_decoder_mlp=4 * model_cfg.sam_channels,
            sam_decoder_heads=2, vision_feature_layer=-1,
        )
    if model_cfg.size == "7b":
        return Shapes(
            size="7b", vocab_size=vocab_size or 32005, text_hidden=4096, text_layers=32, text_heads=32,
            text_intermediate=11008, clip_hidden=1024, clip_layers=24, clip_heads=16, clip_intermediate=4096,
            clip_image=224, clip_patch=14, sam_hidden=1280, sam_layers=32, sam_heads=16,
            sam_global_attn=(7, 15, 23, 31), sam_window=14, sam_image=1024, sam_patch=16, sam_out=256,
            sam_decoder_mlp=2048, sam_decoder_heads=8, vision_feature_layer=-2,
        )
    raise ModelError(f"unknown model.size {model_cfg.size!r}; expected tiny or 7b")


def hf_configs(shapes: Shapes, image_token_id: int, pad_token_id: int):
    """(LlavaConfig, SamConfig) for `shapes`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, SamConfig
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig,
    )

    text = LlamaConfig(
        vocab_size=shapes.vocab_size, hidden_size=shapes.text_hidden, num_hidden_layers=shapes.text_layers,
        num_attention_heads=shapes.text_heads, num_key_value_heads=shapes.text_heads,
        intermediate_size=shapes.text_intermediate, max_position_embeddings=2048 if shapes.size == "7b" else 256,
        pad_token_id=pad_token_id, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=shapes.clip_hidden, num_hidden_layers=shapes.clip_layers, num_attention_heads=shapes.clip_heads,
        intermediate_size=shapes.clip_intermediate, image_size=shapes.clip_image, patch_size=shapes.clip_patch,
        projection_dim=shapes.clip_hidden,
    )
    n_patches = (shapes.clip_image // shapes.clip_patch) ** 2
    llava = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=n_patches,
        projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=shapes.vision_feature_layer, tie_word_embeddings=False,
    )
    emb = shapes.sam_image // shapes.sam_patch
    sam = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=shapes.sam_hidden, output_channels=shapes.sam_out, num_hidden_layers=shapes.sam_layers,
            num_attention_heads=shapes.sam_heads, image_size=shapes.sam_image, patch_size=shapes.sam_patch,
            window_size=shapes.sam_window, global_attn_indexes=list(shapes.sam_global_attn),
            num_pos_feats=shapes.sam_out // 2, mlp_dim=None,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=shapes.sam_out, image_size=shapes.sam_image, patch_size=shapes.sam_patch,
            mask_input_channels=16,
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=shapes.sam_out, mlp_dim=shapes.sam_decoder_mlp, num_attention_heads=shapes.sam_decoder_heads,
            iou_head_hidden_dim=shapes.sam_out,
        ),
    )
    assert sam.prompt_encoder_config.image_embedding_size == emb
    return llava, sam


def template_texts() -> list[str]:
    """Every instruction and answer text the templates can produce (tokenizer vocabulary source)."""
    from ils import templates as T
    from ils.vocab import INFERABLE_LESIONS, LESIONS, LOCATIONS

    from rosalia.prompting import render

    texts = [render(None, "")]
    locs = [[loc] for loc in LOCATIONS] + [list(LOCATIONS[:3])]
    for lesion, loc in itertools.product(LESIONS, locs):
        for type_ in ("basic", "global"):
            texts += [T.instruction(type_, lesion, loc), T.answer(type_, lesion, False, loc), T.answer(type_, lesion, True, loc)]
    for inf, cert in itertools.product(INFERABLE_LESIONS, T.CERTAINTIES):
        texts += [T.instruction("lesion_inference", "opacity", ["lung"]), T.answer("lesion_inference", "opacity", True, ["lung"], inf, cert)]
    texts.append(T.answer("lesion_inference", "opacity", False, ["lung"]))
    return texts


_WORD = re.compile(r"\w+|[^\w\s]")


def build_word_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over the instruction/answer vocabulary (offline, tiny)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: list[str] = []
    for text in template_texts():
        for w in _WORD.findall(text.replace(SEG_TOKEN, " ").replace(IMAGE_TOKEN, " ")):
            if w not in words:
                words.append(w)
    specials = [PAD, UNK, BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)
    add_special_tokens(fast)
    return fast


def add_special_tokens(tokenizer) -> None:
    """Add `<image>` and `[SEG]` (and a pad token if missing)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]})
