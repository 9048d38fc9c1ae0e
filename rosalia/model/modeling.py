"""ROSALIA: LLaVA (HF `LlavaForConditionalGeneration`) + SAM (HF `SamModel`) + the [SEG] head.

The last-layer hidden state at the position just before `[SEG]` goes through
Linear(h,h)-ReLU-Linear(h,d_sam) and enters the SAM mask decoder as one sparse prompt token
(dense prompt: `no_mask_embed`, `multimask_output=False`). A presence head (issue 4 item 6)
decides whether the finding is present; at inference it gates the mask. It reads the same
[SEG] state, the mask decoder's IoU-token output (the decoder's summary of the image
conditioned on the prompt, so it sees the SAM image embedding and not only the small CLIP
view the LLM gets) and three statistics of the mask logits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rosalia.loss import rosalia_loss
from rosalia.model.config import IMAGE_TOKEN, SEG_TOKEN, ModelError

if TYPE_CHECKING:
    from ils.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

N_MASK_STATS = 3


class RosaliaModel(nn.Module):
    """LLaVA + SAM + [SEG] projection + presence head; `forward(batch)` returns the losses."""

    def __init__(self, llava, sam, tokenizer, spec: dict[str, Any]):
        super().__init__()
        self.llava = llava
        self.sam = sam
        self.tokenizer = tokenizer
        self.spec = dict(spec)  # size, image_size, clip_size, mask_size, presence_head, threshold
        h = llava.config.text_config.hidden_size
        d = sam.config.mask_decoder_config.hidden_size
        self.text_hidden_fcs = nn.Sequential(nn.Linear(h, h), nn.ReLU(inplace=True), nn.Linear(h, d), nn.Dropout(0.0))
        self.presence_head = (
            nn.Sequential(nn.Linear(h + d + N_MASK_STATS, h), nn.ReLU(inplace=True), nn.Linear(h, 1))
            if spec.get("presence_head", True) else None
        )
        # The IoU-token output of the last mask-decoder call (input of iou_prediction_head).
        self._iou_token: torch.Tensor | None = None
        sam.mask_decoder.iou_prediction_head.register_forward_pre_hook(self._keep_iou_token)
        self.seg_token_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.loss_weights = dict(ce=0.5, bce=5.0, dice=1.0, presence=1.0)

    def _keep_iou_token(self, _module: nn.Module, args: tuple) -> None:
        self._iou_token = args[0]

    # -- pieces --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.text_hidden_fcs[0].weight.device

    @property
    def mask_size(self) -> int:
        return int(self.spec.get("mask_size") or self.spec["image_size"])

    def seg_positions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of the position before the first [SEG], whether the row has one)."""
        is_seg = input_ids == self.seg_token_id
        valid = is_seg.any(dim=1)
        pos = (is_seg.int().argmax(dim=1) - 1).clamp(min=0)
        return pos, valid

    def language(self, input_ids, attention_mask, pixel_values, position_ids=None):
        """LLaVA forward: (lm logits, last-layer hidden states)."""
        out = self.llava(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            position_ids=position_ids, output_hidden_states=True, use_cache=False,
        )
        return out.logits, out.hidden_states[-1]

    def image_embeddings(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        # SamModel.get_image_embeddings runs under no_grad; call the encoder so it can train.
        return self.sam.vision_encoder(sam_pixel_values)[0]

    def decode_masks(self, seg_state: torch.Tensor, image_embeddings: torch.Tensor):
        """Low-res mask logits (B, h4, w4), IoU prediction (B,), prompt embedding (B, d).

        Also keeps the decoder's IoU-token output (B, d) in `self._iou_token` for the presence head.
        """
        b = seg_state.shape[0]
        prompt = self.text_hidden_fcs(seg_state)
        dtype = image_embeddings.dtype
        sparse = prompt.to(dtype)[:, None, None, :]  # (B, point_batch=1, tokens=1, d)
        _, c, hh, ww = image_embeddings.shape
        dense = self.sam.prompt_encoder.no_mask_embed.weight.to(dtype).reshape(1, c, 1, 1).expand(b, c, hh, ww)
        pos = self.sam.get_image_wide_positional_embeddings().to(dtype).expand(b, -1, -1, -1)
        low, iou = self.sam.mask_decoder(
            image_embeddings=image_embeddings, image_positional_embeddings=pos,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        return low[:, 0, 0], iou[:, 0, 0], prompt

    def presence_logits(self, seg_state: torch.Tensor, low: torch.Tensor, iou: torch.Tensor,
                        iou_token: torch.Tensor | None = None) -> torch.Tensor:
        """Presence logit per sample (B,); +inf-like constant when there is no presence head.

        `iou_token`: the mask decoder's IoU-token output of the same call (default: the one kept
        by the last `decode_masks`).
        """
        if self.presence_head is None:
            return torch.full((seg_state.shape[0],), 20.0, device=seg_state.device)
        tok = self._iou_token if iou_token is None else iou_token
        self._iou_token = None  # do not hold on to the graph
        if tok is None or tok.shape[0] != seg_state.shape[0]:
            raise ModelError("presence_logits needs the IoU token of a decode_masks call on the same batch")
        tok = tok.reshape(seg_state.shape[0], -1)
        flat = low.flatten(1).float()
        stats = torch.stack([torch.tanh(flat.amax(1) / 4), torch.sigmoid(flat).mean(1), iou.float()], dim=1)
        x = torch.cat([seg_state.float(), tok.float(), stats], dim=1)
        dtype = self.presence_head[0].weight.dtype
        return self.presence_head(x.to(dtype)).squeeze(1).float()

    def upscale(self, low: torch.Tensor, sizes: torch.Tensor | None, out_size: int | tuple[int, int]) -> torch.Tensor:
        """Low-res logits -> SAM input size -> crop the resized region -> `out_size` (B, H, W)."""
        s = self.spec["image_size"]
        out_hw = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        full = sizes is None or bool((sizes == s).all())
        if full:
            return F.interpolate(low[:, None].float(), size=out_hw, mode="bilinear", align_corners=False)[:, 0]
        up = F.interpolate(low[:, None].float(), size=(s, s), mode="bilinear", align_corners=False)
        outs = [
            F.interpolate(up[i : i + 1, :, : int(sizes[i, 0]), : int(sizes[i, 1])], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
            for i in range(up.shape[0])
        ]
        return torch.stack(outs)

    # -- training / teacher-forced forward ----------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher-forced pass over prompt + answer: losses and the mask/presence predictions."""
        dev = self.device
        ids = batch["input_ids"].to(dev)
        logits, hidden = self.language(ids, batch["attention_mask"].to(dev), batch["pixel_values"].to(dev))
        pos, valid = self.seg_positions(ids)
        seg_state = hidden[torch.arange(ids.shape[0], device=dev), pos]
        emb = self.image_embeddings(batch["sam_pixel_values"].to(dev))
        if batch.get("sam_index") is not None:  # pairs sharing an image share its embedding
            emb = emb[batch["sam_index"].to(dev)]
        low, iou, _ = self.decode_masks(seg_state, emb)
        sizes = batch.get("sizes")
        mask_logits = self.upscale(low, sizes.to(dev) if sizes is not None else None, self.mask_size)
        presence_logits = self.presence_logits(seg_state, low, iou)
        out: dict[str, torch.Tensor] = {"mask_logits": mask_logits, "presence_logits": presence_logits, "seg_valid": valid}
        if "labels" in batch and "masks" in batch:
            out.update(
                rosalia_loss(
                    logits, batch["labels"].to(dev), mask_logits, batch["masks"].to(dev),
                    presence_logits if self.presence_head is not None else None,
                    batch["presence"].to(dev), valid, self.loss_weights,
                )
            )
        return out

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens: int = 24):
        """Greedy continuation of left-padded prompts that end with [SEG].

        Returns (answer token ids (B, T) after [SEG], last-layer state before [SEG] (B, h)).
        The state before [SEG] depends only on the prompt (causal attention), so it equals the
        teacher-forced one.
        """
        tok = self.tokenizer
        eos = tok.eos_token_id
        out = self.llava.generate(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id,
            output_hidden_states=True, return_dict_in_generate=True,
        )
        seg_state = out.hidden_states[0][-1][:, -2]
        return out.sequences[:, input_ids.shape[1] :], seg_state


def _dtype(model_cfg: "ModelConfig") -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(model_cfg.dtype, torch.float32)


def spec_from(model_cfg: "ModelConfig", shapes) -> dict[str, Any]:
    return dict(
        size=model_cfg.size, image_size=shapes.sam_image, clip_size=shapes.clip_image,
        mask_size=model_cfg.mask_size or shapes.sam_image, presence_head=model_cfg.presence_head,
        presence_threshold=model_cfg.presence_threshold, max_new_tokens=model_cfg.max_new_tokens,
    )


def build_random(model_cfg: "ModelConfig", tokenizer=None) -> RosaliaModel:
    """A randomly initialised model of `model_cfg.size` (tokenizer: word-level unless given)."""
    from transformers import LlavaForConditionalGeneration, SamModel

    from rosalia.model.config import build_word_tokenizer, hf_configs, shapes_for

    tokenizer = tokenizer or build_word_tokenizer()
    shapes = shapes_for(model_cfg, vocab_size=len(tokenizer))
    if shapes.vocab_size < len(tokenizer):
        raise ModelError(f"vocab_size {shapes.vocab_size} < tokenizer size {len(tokenizer)}")
    llava_cfg, sam_cfg = hf_configs(shapes, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id)
    llava = LlavaForConditionalGeneration(llava_cfg)
    sam = SamModel(sam_cfg)
    return RosaliaModel(llava, sam, tokenizer, spec_from(model_cfg, shapes))


def apply_training_setup(model: RosaliaModel, train_cfg: "TrainConfig | None") -> RosaliaModel:
    """Loss weights, LoRA on the LLM's linear layers, and the trainable/frozen split (SPEC 3)."""
    if train_cfg is None:
        return model
    model.loss_weights = dict(
        ce=train_cfg.ce_weight, bce=train_cfg.bce_weight, dice=train_cfg.dice_weight, presence=train_cfg.presence_weight,
    )
    lm = model.llava.model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    if train_cfg.lora_r > 0:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(
            r=train_cfg.lora_r, lora_alpha=train_cfg.lora_alpha, lora_dropout=train_cfg.lora_dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        inject_adapter_in_model(cfg, lm)  # LoRA params are created trainable
    else:
        for p in lm.parameters():
            p.requires_grad_(True)
    trainable = [model.llava.lm_head, lm.embed_tokens, model.sam.mask_decoder, model.text_hidden_fcs]
    if model.presence_head is not None:
        trainable.append(model.presence_head)
        model.spec["presence_head"] = True  # trained from here on (a converted LISA checkpoint had "untrained, open")
    if not getattr(train_cfg, "freeze_vision", True):
        trainable += [model.llava.model.vision_tower, model.llava.model.multi_modal_projector,
                      model.sam.vision_encoder, model.sam.prompt_encoder, model.sam.shared_image_embedding]
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    return model


def trainable_parameters(model: RosaliaModel) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
