"""`ils convert-lisa`: a synthetic LISA state dict (original key names, tiny shapes) -> rosalia checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ils.cli import main
from ils.config import load_config
from ils.store import Store
from rosalia.data import PairDataset, collate_for, synthetic_run
from rosalia.model import ModelError, build_model, load_model
from rosalia.model.convert_lisa import (
    LISA_CLIP, OPEN_LOGIT, PRESENCE_UNTRAINED, LisaKeyMap, convert, sam_key_from_hf, sam_key_to_hf, to_lisa_state_dict,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["model.image_size=64", "model.clip_size=32", "train.lora_r=4"])


@pytest.fixture(scope="module")
def lisa(cfg, tmp_path_factory):
    """(original model with a linear projector and merged-able LoRA, its LISA state dict, a batch, tokenizer dir)."""
    from transformers.activations import ACT2FN

    torch.manual_seed(0)
    m = build_model(cfg.model, cfg.train)
    with torch.no_grad():  # non-trivial LoRA deltas: the export must merge them
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m.llava.config.projector_hidden_act = "linear"  # LISA's projector is one Linear; linear_2 stays random
    m.llava.model.multi_modal_projector.act = ACT2FN["linear"]
    m.eval()
    run = Store(str(tmp_path_factory.mktemp("run")))
    synthetic_run(run, 6, seed=0, size=64)
    ds = PairDataset.from_run(run, None, 64, 64, cache=False)
    idx = [int(np.flatnonzero(ds.presence)[0]), int(np.flatnonzero(~ds.presence)[0]), int(np.flatnonzero(ds.presence)[1])]
    batch = collate_for(m)([ds[i] for i in idx])
    with torch.no_grad():
        ref = m(batch)["mask_logits"]
    sd = to_lisa_state_dict(m)
    tok_dir = tmp_path_factory.mktemp("tok")
    m.tokenizer.save_pretrained(tok_dir)
    return m, sd, batch, ref, str(tok_dir)


def test_lisa_names(lisa):
    _, sd, *_ = lisa
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.mm_projector.weight",
            "model.mm_projector.bias", "model.layers.1.self_attn.q_proj.weight", "model.text_hidden_fcs.0.0.weight",
            "model.text_hidden_fcs.0.2.bias", "model.visual_model.image_encoder.blocks.0.norm1.weight",
            "model.visual_model.image_encoder.neck.0.weight", "model.visual_model.prompt_encoder.mask_downscaling.6.weight",
            "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "model.visual_model.mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
            "model.visual_model.mask_decoder.iou_prediction_head.layers.1.bias",
            "model.visual_model.mask_decoder.transformer.norm_final_attn.weight",
            LISA_CLIP + "encoder.layers.0.self_attn.q_proj.weight"} <= set(sd)
    assert not any("lora" in k or "presence" in k or "linear_2" in k or "multi_modal" in k for k in sd)
    assert sd["model.mm_projector.weight"].shape == (64, 64)


def test_key_map_round_trip(lisa):
    m = lisa[0]
    keys = [k for k in m.state_dict() if "lora_" not in k]
    keys = [k.replace(".base_layer.", ".") for k in keys]
    kmap = LisaKeyMap(keys)
    for k in keys:
        name = kmap.to_lisa(k)
        if name is None:
            assert kmap.synthesized(k)
            continue
        back = kmap.to_hf(name)
        assert back == k or (k.endswith("shared_image_embedding.positional_embedding") and back.endswith("shared_embedding.positional_embedding")), (k, name, back)
    for k in (k for k in keys if k.startswith("sam.")):  # the inverse agrees with convert_sam_to_hf's rules
        if not k.startswith("sam.shared_image_embedding"):
            assert sam_key_to_hf(sam_key_from_hf(k[4:])) == k[4:]


def test_convert_cli_outputs_match(lisa, tmp_path, cfg):
    m, sd, batch, ref, tok = lisa
    torch.save(sd, tmp_path / "lisa.bin")
    out = tmp_path / "ck"
    assert main(["--log-level", "WARNING", "convert-lisa", str(tmp_path / "lisa.bin"), str(out), "--tokenizer", tok,
                 "--prompt-style", "plain"]) == 0
    spec = json.loads((out / "rosalia.json").read_text())
    assert spec["presence_head"] == PRESENCE_UNTRAINED and spec["size"] == "tiny" and spec["image_size"] == 64
    conv = load_model(str(out))
    assert conv.llava.config.projector_hidden_act == "linear"
    with torch.no_grad():
        o = conv(batch)
    assert torch.allclose(o["mask_logits"], ref, atol=1e-4, rtol=1e-4), (o["mask_logits"] - ref).abs().max()
    assert torch.allclose(o["presence_logits"], torch.full_like(o["presence_logits"], OPEN_LOGIT))
    # the converted model exports back to the same LISA state dict (projector folded again)
    back = to_lisa_state_dict(conv)
    assert set(back) == set(sd)
    assert all(torch.allclose(back[k].float(), sd[k].float(), atol=1e-5) for k in sd)
    # serve/eval: the untrained head does not gate (present = mask non-empty, the ungated protocol)
    from rosalia.segmenter import Segmenter

    seg = Segmenter(model=conv, device="cpu")
    rng = np.random.default_rng(0)
    for r in seg.segment([rng.random((40, 48)), rng.random((64, 64))], ["Segment the heart.", "Is there an opacity?"]):
        assert r.present == bool(r.mask.any())
    # training the converted model marks its presence head as trained (gating on from then on)
    from rosalia.model.modeling import apply_training_setup

    assert apply_training_setup(conv, cfg.train).spec["presence_head"] is True


def test_sharded_folder_and_separate_clip(lisa, tmp_path, cfg):
    from safetensors.torch import save_file

    _, sd, _, _, tok = lisa
    src = tmp_path / "hf"
    src.mkdir()
    clip = {"vision_model." + k[len(LISA_CLIP):]: v for k, v in sd.items() if k.startswith(LISA_CLIP)}
    rest = [k for k in sd if not k.startswith(LISA_CLIP)]  # as LISA's merge script saves it: no CLIP tower
    shards = {"model-00001-of-00002.safetensors": rest[: len(rest) // 2], "model-00002-of-00002.safetensors": rest[len(rest) // 2 :]}
    for name, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(src / name))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    with pytest.raises(ModelError, match="--vision-tower"):
        convert(str(src), str(tmp_path / "a"), cfg.model, tokenizer=tok, prompt_style="plain")
    torch.save(clip, tmp_path / "clip.bin")
    summary = convert(str(src), str(tmp_path / "b"), cfg.model, tokenizer=tok, vision_tower=str(tmp_path / "clip.bin"),
                      prompt_style="plain")
    assert summary["size"] == "tiny"
    conv = load_model(str(tmp_path / "b"))
    assert torch.equal(conv.sam.mask_decoder.iou_token.weight, sd["model.visual_model.mask_decoder.iou_token.weight"])


def test_missing_wrong_shape_and_lora_refused(lisa, tmp_path, cfg):
    _, sd, _, _, tok = lisa
    missing = dict(sd)
    del missing["model.visual_model.mask_decoder.iou_token.weight"]
    torch.save(missing, tmp_path / "missing.bin")
    with pytest.raises(ModelError, match=r"missing keys.*model\.visual_model\.mask_decoder\.iou_token\.weight"):
        convert(str(tmp_path / "missing.bin"), str(tmp_path / "o1"), cfg.model, tokenizer=tok, prompt_style="plain")
    wrong = dict(sd)
    wrong["model.text_hidden_fcs.0.2.weight"] = torch.zeros(7, 64)
    torch.save(wrong, tmp_path / "wrong.bin")
    with pytest.raises(ModelError, match=r"wrong shapes.*model\.text_hidden_fcs\.0\.2\.weight"):
        convert(str(tmp_path / "wrong.bin"), str(tmp_path / "o2"), cfg.model, tokenizer=tok, prompt_style="plain")
    lora = {("base_model.model." + k): v for k, v in sd.items()}
    lora["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(4, 64)
    torch.save(lora, tmp_path / "lora.bin")
    with pytest.raises(ModelError, match="unmerged LoRA"):
        convert(str(tmp_path / "lora.bin"), str(tmp_path / "o3"), cfg.model, tokenizer=tok, prompt_style="plain")
    assert main(["--log-level", "ERROR", "convert-lisa", str(tmp_path / "lora.bin"), str(tmp_path / "o4")]) == 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_s3_source_and_destination(lisa, tmp_path, s3_bucket):
    import io
    from pathlib import Path

    from ils.config import StoreConfig

    endpoint, bucket = s3_bucket
    _, sd, _, _, tok = lisa
    st = Store.from_config(StoreConfig(uri=f"s3://{bucket}", endpoint=endpoint))
    buf = io.BytesIO()
    torch.save(sd, buf)
    st.write_bytes("src/lisa.bin", buf.getvalue())
    for f in Path(tok).iterdir():
        st.write_bytes(f"tok/{f.name}", f.read_bytes())
    args = ["--log-level", "WARNING", "convert-lisa", f"s3://{bucket}/src/lisa.bin", f"s3://{bucket}/ck",
            "--tokenizer", f"s3://{bucket}/tok", "--prompt-style", "plain", f"store.uri=s3://{bucket}", f"store.endpoint={endpoint}"]
    assert main(args) == 0
    assert "ck/rosalia.json" in st.list("ck")
    conv = load_model(f"s3://{bucket}/ck", store=st)
    assert torch.equal(conv.text_hidden_fcs[2].weight, sd["model.text_hidden_fcs.0.2.weight"])
