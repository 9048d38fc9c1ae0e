"""ROSALIA model: shapes, loss terms, freezing, checkpoints, data plan (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ils.config import load_config
from ils.store import Store
from rosalia.data import AugmentedPairs, EpochPlan, PairDataset, collate_for, encode_texts, synthetic_run
from rosalia.loss import dice_loss
from rosalia.model import build_model, load_model, save_checkpoint, trainable_parameters
from rosalia.model.config import ModelError, build_word_tokenizer, hf_configs, shapes_for


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["model.image_size=64", "model.clip_size=32", "train.lora_r=4", "train.freeze_vision=true"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    st = Store(str(tmp_path_factory.mktemp("run")))
    synthetic_run(st, 6, seed=0, size=64)
    return st


def _batch(model, run):
    ds = PairDataset.from_run(run, None, 64, 64, cache=False)
    idx = [int(np.flatnonzero(ds.presence)[0]), int(np.flatnonzero(~ds.presence)[0])]
    return collate_for(model)([ds[i] for i in idx])


def test_forward_losses_and_labels(cfg, run):
    torch.manual_seed(0)
    m = build_model(cfg.model, cfg.train)
    b = _batch(m, run)
    # labels only on answer tokens: everything up to and including "ASSISTANT :" is -100
    seg = m.tokenizer.convert_tokens_to_ids("[SEG]")
    for row_ids, row_lab in zip(b["input_ids"], b["labels"]):
        first = int((row_ids == seg).nonzero()[0])
        assert (row_lab[:first] == -100).all() and row_lab[first] == seg
    out = m(b)
    assert set(out) >= {"loss", "ce", "bce", "dice", "presence"}
    assert out["mask_logits"].shape == (2, 64, 64)
    w = m.loss_weights
    expect = w["ce"] * out["ce"] + w["bce"] * out["bce"] + w["dice"] * out["dice"] + w["presence"] * out["presence"]
    assert torch.allclose(out["loss"].detach(), expect, atol=1e-5)
    out["loss"].backward()
    assert m.text_hidden_fcs[0].weight.grad is not None and m.presence_head[0].weight.grad is not None
    assert m._iou_token is None  # not kept after the forward (no graph held)


def test_presence_head_reads_the_decoder_iou_token(cfg, run):
    """The presence decision sees the SAM image through the mask decoder's IoU token."""
    torch.manual_seed(0)
    m = build_model(cfg.model, cfg.train)
    h = m.llava.config.text_config.hidden_size
    d = m.sam.config.mask_decoder_config.hidden_size
    assert m.presence_head[0].in_features == h + d + 3
    b = _batch(m, run)
    out = m(b)
    out["presence_logits"].sum().backward()
    assert m.sam.mask_decoder.iou_token.weight.grad is not None
    assert float(m.sam.mask_decoder.iou_token.weight.grad.abs().sum()) > 0


def test_dice_only_on_nonempty_and_value():
    logits = torch.full((2, 8, 8), 10.0)
    target = torch.zeros(2, 8, 8)
    target[0] = 1
    d = dice_loss(logits, target)
    assert d[0] < 0.01 and d[1] > 0.99  # perfect vs all-wrong


def test_freezing_and_lora(cfg):
    m = build_model(cfg.model, cfg.train)  # freeze_vision=true (the demo config trains them: tiny is random)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names)
    assert not any(n.startswith("llava.model.vision_tower") for n in names)
    assert not any(n.startswith("sam.vision_encoder") or n.startswith("sam.prompt_encoder") for n in names)
    assert any(n.startswith("sam.mask_decoder") for n in names)
    assert any("embed_tokens" in n for n in names) and any("lm_head" in n for n in names)
    assert not any("q_proj.base_layer" in n for n in names)
    cfg2 = load_config(None, ["model.image_size=64", "model.clip_size=32", "train.freeze_vision=false"])
    m2 = build_model(cfg2.model, cfg2.train)
    assert sum(p.numel() for p in trainable_parameters(m2)) > sum(p.numel() for p in trainable_parameters(m))


def test_checkpoint_roundtrip_merges_lora(cfg, run, tmp_path):
    torch.manual_seed(1)
    m = build_model(cfg.model, cfg.train)
    with torch.no_grad():  # make LoRA non-trivial (lora_B starts at zero)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    m.eval()
    b = _batch(m, run)
    with torch.no_grad():
        ref = m(b)
    save_checkpoint(m, str(tmp_path / "ck"))
    m2 = load_model(str(tmp_path / "ck"))
    assert not any("lora" in n for n, _ in m2.named_parameters())
    with torch.no_grad():
        got = m2(b)
    assert torch.allclose(ref["mask_logits"], got["mask_logits"], atol=1e-4)
    assert torch.allclose(ref["ce"], got["ce"], atol=1e-5)


def test_checkpoint_in_s3(cfg, s3_bucket):
    from ils.store import S3Options

    endpoint, bucket = s3_bucket
    store = Store(f"s3://{bucket}/root", S3Options(endpoint=endpoint))
    m = build_model(cfg.model)
    uri = save_checkpoint(m, "ck/a", store=store)
    assert uri.startswith("s3://")
    m2 = load_model("ck/a", store=store)
    assert m2.spec == m.spec
    with pytest.raises(ModelError):
        load_model("ck/missing", store=store)


def test_generation_state_equals_teacher_forced(cfg, run):
    m = build_model(cfg.model).eval()
    b = _batch(m, run)
    instr = [r["instruction"] for r in b["meta"]]
    enc = encode_texts(m.tokenizer, instr, None, m.llava.config.image_seq_length, left_pad=True, add_seg=True)
    _, state = m.generate(enc["input_ids"], enc["attention_mask"], b["pixel_values"], 3)
    with torch.no_grad():
        _, hid = m.language(b["input_ids"], b["attention_mask"], b["pixel_values"])
    pos, valid = m.seg_positions(b["input_ids"])
    assert valid.all()
    assert torch.allclose(hid[torch.arange(2), pos], state, atol=1e-4)


def test_epoch_plan_balanced_deterministic_resumable():
    presence = [True] * 5 + [False] * 20
    p = EpochPlan(3, 1, presence)
    assert len(p) == 10
    order = p.order.tolist()
    assert sum(presence[i] for i in order) == 5 and len(set(order)) == 10
    assert order == EpochPlan(3, 1, presence).order.tolist()
    assert order != EpochPlan(3, 2, presence).order.tolist()
    full = [i for b in p.batches(4) for i in b]
    resumed = [i for b in p.batches(4, start=4) for i in b]
    assert full == order and resumed == order[4:]
    for b in p.batches(4, drop_last=True):
        assert sum(presence[i] for i in b) == 2


def test_epoch_plan_repeats_oversampled_positives():
    presence = [True] * 4 + [False] * 20
    repeats = [3, 1, 1, 1] + [1] * 20
    order = EpochPlan(0, 0, presence, repeats).order.tolist()
    pos = [i for i in order if presence[i]]
    assert sorted(pos) == [0, 0, 0, 1, 2, 3] and len(order) == 12  # still 1:1
    assert EpochPlan(0, 0, presence, [1] * 24).order.tolist() == EpochPlan(0, 0, presence).order.tolist()


def test_epoch_plan_negative_ratio_spreads_negatives_evenly():
    presence = [True] * 8 + [False] * 40
    p = EpochPlan(1, 0, presence, negative_ratio=0.5)
    order = p.order.tolist()
    assert len(order) == 12 and sorted(i for i in order if presence[i]) == list(range(8))
    assert len({i for i in order if not presence[i]}) == 4  # drawn without replacement
    for b in p.batches(3):  # every batch of 3 holds 2 positives and 1 negative
        assert sum(presence[i] for i in b) == 2
    three = EpochPlan(1, 0, presence, negative_ratio=3.0).order.tolist()
    assert len(three) == 32 and sum(presence[i] for i in three) == 8
    assert EpochPlan(1, 0, presence, negative_ratio=1.0).order.tolist() == EpochPlan(1, 0, presence).order.tolist()
    with pytest.raises(ValueError):
        EpochPlan(1, 0, presence, negative_ratio=0)


def test_epoch_plan_pairs_per_image_groups_an_images_pairs():
    rng = np.random.default_rng(0)
    presence = rng.random(300) < 0.3
    groups = rng.integers(0, 40, 300)  # image id of each pair
    plain = EpochPlan(2, 0, presence, negative_ratio=0.5).order
    grouped = EpochPlan(2, 0, presence, negative_ratio=0.5, groups=groups, pairs_per_image=4).order
    assert sorted(grouped.tolist()) == sorted(plain.tolist())  # same pairs, same ratio
    assert grouped.tolist() == EpochPlan(2, 0, presence, negative_ratio=0.5, groups=groups, pairs_per_image=4).order.tolist()
    # runs of one image: at most 4 long, and an image's runs are as long as its pairs allow
    img = groups[grouped]
    runs = np.split(img, np.flatnonzero(img[1:] != img[:-1]) + 1)
    assert max(len(r) for r in runs) == 4
    per_image = np.bincount(img, minlength=40)
    for g in range(40):
        lens = sorted((len(r) for r in runs if r[0] == g), reverse=True)
        assert lens == [4] * (per_image[g] // 4) + ([per_image[g] % 4] if per_image[g] % 4 else [])
    batches = list(EpochPlan(2, 0, presence, negative_ratio=0.5, groups=groups, pairs_per_image=4).batches(16, drop_last=True))
    assert np.mean([len(set(groups[b])) for b in batches]) < np.mean(
        [len(set(groups[b])) for b in EpochPlan(2, 0, presence, negative_ratio=0.5).batches(16, drop_last=True)])
    assert EpochPlan(2, 0, presence, groups=groups, pairs_per_image=1).order.tolist() == EpochPlan(2, 0, presence).order.tolist()
    with pytest.raises(ValueError):
        EpochPlan(2, 0, presence, groups=groups, pairs_per_image=0)


def test_pairs_of_one_image_share_the_sam_pass(cfg, run):
    """Collate keeps one copy of a shared image; the forward pass gives the same losses and
    masks as with every pair carrying its own copy."""
    torch.manual_seed(0)
    m = build_model(cfg.model, cfg.train).eval()
    ds = PairDataset.from_run(run, None, 64, 64, cache=False)
    first = int(ds.image_index[0])
    same = [i for i in range(len(ds)) if ds.image_index[i] == first][:3]
    other = next(i for i in range(len(ds)) if ds.image_index[i] != first)
    items = [ds[i] for i in same + [other]]
    shared = collate_for(m)(items)
    assert shared["sam_pixel_values"].shape[0] == 2 and shared["sam_index"].tolist() == [0] * len(same) + [1]
    assert shared["pixel_values"].shape[0] == len(items) and shared["sizes"].shape[0] == len(items)
    copies = collate_for(m)([{k: v for k, v in it.items() if k != "image_key"} for it in items])
    assert copies["sam_pixel_values"].shape[0] == len(items) and "sam_index" not in copies
    with torch.no_grad():
        a, b = m(shared), m(copies)
    for k in ("loss", "bce", "dice", "presence", "mask_logits", "presence_logits"):
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # jittered items are not shared: the augmentation differs per pair
    aug = collate_for(m)([AugmentedPairs(ds, 0.04, 0.2, 0.1, 0.05)[i] for i in same])
    assert aug["sam_pixel_values"].shape[0] == len(same) and "sam_index" not in aug


def test_tiny_param_count_and_7b_shapes():
    cfg = load_config(None, [])
    tok = build_word_tokenizer()
    assert "[SEG]" in tok.get_vocab() and "<image>" in tok.get_vocab()
    m = build_model(cfg.model)
    n = sum(p.numel() for p in m.parameters())
    assert 2e5 < n < 2e6
    wide = shapes_for(load_config(None, ["model.sam_hidden=128", "model.sam_layers=3"]).model)
    _, wide_sam = hf_configs(wide, 1, 0)
    assert wide_sam.vision_config.hidden_size == 128 and wide_sam.vision_config.num_hidden_layers == 3
    for bad in ("model.sam_hidden=40", "model.sam_layers=0"):
        with pytest.raises(ModelError, match="sam_hidden"):
            shapes_for(load_config(None, [bad]).model)
    seven = load_config(None, ["model.size=7b"])
    sh = shapes_for(seven.model, 32005)
    llava, sam = hf_configs(sh, 32003, 0)
    assert llava.text_config.hidden_size == 4096 and llava.text_config.num_hidden_layers == 32
    assert llava.vision_config.hidden_size == 1024 and llava.vision_config.image_size == 224 and llava.vision_config.patch_size == 14
    assert llava.image_seq_length == 256
    assert sam.vision_config.hidden_size == 1280 and sam.vision_config.num_hidden_layers == 32
    assert sam.vision_config.image_size == 1024 and sam.prompt_encoder_config.image_embedding_size == 64
    assert sam.mask_decoder_config.hidden_size == 256
    with torch.device("meta"):
        from transformers import LlavaForConditionalGeneration

        n7 = sum(p.numel() for p in LlavaForConditionalGeneration(llava).parameters())
    assert 6.5e9 < n7 < 7.5e9
    with pytest.raises(ModelError):
        shapes_for(load_config(None, ["model.size=13b"]).model)


def test_augmented_pairs_shift_image_and_mask_together(run):
    """Training augmentation: reproducible from torch's RNG, the mask moves with the image and
    stays binary, exposure changes, texts and presence do not."""
    ds = PairDataset.from_run(run, None, 64, 64, cache=False)
    aug = ds.augmented(shift=0.1, gamma=0.3, gain=0.1, offset=0.05)
    i = int(np.flatnonzero(ds.presence)[0])
    torch.manual_seed(5)
    a = aug[i]
    torch.manual_seed(5)
    b = aug[i]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    base = ds[i]
    assert a["instruction"] == base["instruction"] and a["presence"] == base["presence"]
    assert set(torch.unique(a["mask"]).tolist()) <= {0.0, 1.0} and a["mask"].sum() > 0
    moved = [aug[i] for _ in range(8)]
    assert any(not torch.equal(m["mask"], base["mask"]) for m in moved)
    for m in moved:  # the same shift: the mask's centre of mass moves like the image's bright mass
        ys, xs = torch.nonzero(m["mask"] > 0, as_tuple=True)
        y0, x0 = torch.nonzero(base["mask"] > 0, as_tuple=True)
        dy, dx = float(ys.float().mean() - y0.float().mean()), float(xs.float().mean() - x0.float().mean())
        assert abs(dy) <= 0.1 * 64 + 1 and abs(dx) <= 0.1 * 64 + 1
        shifted = AugmentedPairs._translate(base["mask"], int(round(dy)), int(round(dx)))
        assert (shifted != m["mask"]).float().mean() < 0.02  # a pure translation of the target
