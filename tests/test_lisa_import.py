"""`ils convert-lisa` on a tiny LISA-shaped source folder saved the way LISA's merge script saves it.

The folder holds sharded `pytorch_model-*.bin` + index, a LISA `config.json` whose LLaMA values
differ from the project's tiny defaults, and a SentencePiece `tokenizer.model` trained here with
LISA's added tokens; no CLIP tower (passed with --vision-tower). The reference is computed in the
test from the same weights, the way LISA runs them: LLaVA's v1 conversation with
`<im_start><image><im_end>`, `tokenizer_image_token`'s chunked tokenisation, the image features
spliced in place of the image marker, the LLaMA built from config.json, the [SEG] projection and
SAM's mask decoder. All weights are random (synthetic).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ils.cli import main
from ils.config import load_config
from rosalia.data import collate_for, encode_texts, preprocess_images
from rosalia.model import ModelError, build_random, load_model, save_checkpoint
from rosalia.model.convert_lisa import LISA_CLIP, LISA_SAM, convert, to_lisa_state_dict

torch.set_num_threads(1)
pytest.importorskip("sentencepiece")

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
N_SP = 500  # SentencePiece pieces; LISA's added tokens follow
ADDED = {"[SEG]": N_SP, "<im_start>": N_SP + 1, "<im_end>": N_SP + 2}
LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-5, max_position_embeddings=1024, rope_theta=20000.0, vocab_size=N_SP + 3)
INSTR = "Segment the pleural effusion in the left lung."
IMAGE_MARK = -200  # LISA's IMAGE_TOKEN_INDEX


def write_tokenizer(folder, added=ADDED) -> None:
    """A LLaMA-style SentencePiece tokenizer folder as transformers 4.31 saves LISA's."""
    import sentencepiece as spm

    from rosalia.model.config import template_texts

    buf = io.BytesIO()
    texts = template_texts() + [SYSTEM + " USER: ASSISTANT:", INSTR]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 3), model_writer=buf, vocab_size=N_SP, model_type="bpe", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": False, "model_max_length": 512}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    (folder / "added_tokens.json").write_text(json.dumps(added))


def lisa_config(proj_layers: int, **over) -> dict:
    cfg = {"architectures": ["LISAForCausalLM"], "model_type": "llava", **LLAMA, "hidden_act": "silu",
           "mm_use_im_start_end": True, "mm_vision_select_layer": -2, "mm_hidden_size": 64,
           "mm_vision_tower": "openai/clip-vit-large-patch14", "tie_word_embeddings": False, "torch_dtype": "float32",
           "use_mm_proj": True}
    if proj_layers == 2:
        cfg["mm_projector_type"] = "mlp2x_gelu"
    cfg.update(over)
    return cfg


def save_sharded(sd: dict, folder) -> None:
    """LISA's merge script: `save_pretrained(state_dict=...)` without vision_tower keys, two shards + index."""
    keys = sorted(k for k in sd if "vision_tower" not in k)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, ks in shards.items():
        torch.save({k: sd[k].contiguous() for k in ks}, folder / name)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))


@pytest.fixture(scope="module", params=[1, 2], ids=["linear-projector", "mlp2x-gelu-projector"])
def source(request, tmp_path_factory):
    """(source folder, clip.bin, LISA state dict, the LLaMA, the tiny model SAM/CLIP came from, projector layers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layers = request.param
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32"])
    torch.manual_seed(1)
    m = build_random(cfg.model).eval()
    base = to_lisa_state_dict(m)
    sd = {k: v for k, v in base.items() if k.startswith((LISA_SAM, LISA_CLIP, "model.text_hidden_fcs."))}
    llama = LlamaForCausalLM(LlamaConfig(**LLAMA, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval()
    sd.update({k: v.detach().clone() for k, v in llama.state_dict().items() if "rotary" not in k})
    g = torch.Generator().manual_seed(2)
    if layers == 1:
        sd["model.mm_projector.weight"] = torch.randn(64, 64, generator=g) * 0.1
        sd["model.mm_projector.bias"] = torch.randn(64, generator=g) * 0.1
    else:
        for i in (0, 2):
            sd[f"model.mm_projector.{i}.weight"] = torch.randn(64, 64, generator=g) * 0.1
            sd[f"model.mm_projector.{i}.bias"] = torch.randn(64, generator=g) * 0.1
    folder = tmp_path_factory.mktemp(f"lisa{layers}")
    save_sharded(sd, folder)
    (folder / "config.json").write_text(json.dumps(lisa_config(layers)))
    write_tokenizer(folder)
    clip = tmp_path_factory.mktemp("clip") / "clip.bin"
    torch.save({"vision_model." + k[len(LISA_CLIP):]: v for k, v in sd.items() if k.startswith(LISA_CLIP)}, clip)
    return folder, clip, sd, llama, m, layers


def tokenizer_image_token(prompt: str, tok) -> list[int]:
    """LISA's `tokenizer_image_token`: chunks around <image> tokenised alone, BOS once, a marker for the image."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for k, x in enumerate(chunks):
        if k:
            ids.append(IMAGE_MARK)
        ids.extend(x[offset:])
    return ids


def reference(src, image: np.ndarray):
    """LISA's computation from the source weights: (prompt ids with the marker, state before [SEG], low-res mask logits)."""
    from transformers import AutoTokenizer

    folder, _, sd, llama, m, layers = src
    tok = AutoTokenizer.from_pretrained(str(folder))
    # LISA chat.py: "<image>\n" + prompt, <image> wrapped, llava_v1 conversation, empty ASSISTANT turn
    user = ("<image>" + "\n" + INSTR).replace("<image>", "<im_start><image><im_end>")
    prompt = SYSTEM + " " + "USER: " + user + " " + "ASSISTANT:"
    ids = tokenizer_image_token(prompt, tok) + [ADDED["[SEG]"]]
    clip_px, sam_px, _ = preprocess_images([image], 64, 32)
    with torch.no_grad():
        feats = m.llava.model.vision_tower(clip_px, output_hidden_states=True).hidden_states[-2][:, 1:]  # select_layer -2
        if layers == 1:
            feats = F.linear(feats, sd["model.mm_projector.weight"], sd["model.mm_projector.bias"])
        else:
            feats = F.linear(F.gelu(F.linear(feats, sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"])),
                             sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"])
        k = ids.index(IMAGE_MARK)
        emb = llama.model.embed_tokens
        x = torch.cat([emb(torch.tensor([ids[:k]])), feats, emb(torch.tensor([ids[k + 1 :]]))], 1)
        h = llama(inputs_embeds=x, output_hidden_states=True).hidden_states[-1][0, -2]
        fc = "model.text_hidden_fcs.0."
        p = F.linear(F.relu(F.linear(h, sd[fc + "0.weight"], sd[fc + "0.bias"])), sd[fc + "2.weight"], sd[fc + "2.bias"])
        img_emb = m.sam.vision_encoder(sam_px)[0]
        _, c, hh, ww = img_emb.shape
        dense = m.sam.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1).expand(1, c, hh, ww)
        low, _ = m.sam.mask_decoder(image_embeddings=img_emb, image_positional_embeddings=m.sam.get_image_wide_positional_embeddings(),
                                    sparse_prompt_embeddings=p[None, None, None], dense_prompt_embeddings=dense, multimask_output=False)
    return ids, h, low[:, 0, 0]


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    folder, clip, *_ = source
    out = tmp_path_factory.mktemp("ck") / "ck"
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32"])
    summary = convert(str(folder), str(out), cfg.model, vision_tower=str(clip))
    return load_model(str(out)), summary


def test_converted_runs_as_lisa(source, converted):
    """Prompt ids, the state before [SEG] and the mask logits equal LISA's computation from the same weights."""
    conv, summary = converted
    layers = source[-1]
    assert summary["prompt_style"] == "llava_v1" and conv.spec["prompt_style"] == "llava_v1"
    assert summary["projector_layers"] == layers and summary["seg_token_id"] == ADDED["[SEG]"]
    t = conv.llava.config.text_config  # from config.json, not the tiny defaults
    assert (t.rms_norm_eps, t.max_position_embeddings, t.num_key_value_heads, t.intermediate_size) == (1e-5, 1024, 2, 96)
    assert conv.llava.config.vision_feature_layer == -2
    assert conv.llava.config.projector_hidden_act == ("linear" if layers == 1 else "gelu")
    image = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    ref_ids, ref_h, ref_low = reference(source, image)
    n_img = int(conv.llava.config.image_seq_length)
    enc = encode_texts(conv.tokenizer, [INSTR], None, n_img, left_pad=True, add_seg=True, prompt_style=conv.spec["prompt_style"])
    ids = enc["input_ids"][0].tolist()
    k = ids.index(conv.image_token_id)
    assert ids[k : k + n_img] == [conv.image_token_id] * n_img
    assert ids[:k] + [IMAGE_MARK] + ids[k + n_img :] == ref_ids  # exactly LISA's prompt tokens
    clip_px, sam_px, _ = preprocess_images([image], 64, 32)
    with torch.no_grad():
        _, seg_state = conv.generate(enc["input_ids"], enc["attention_mask"], clip_px, max_new_tokens=2)
        low, _, _ = conv.decode_masks(seg_state, conv.image_embeddings(sam_px))
    assert torch.allclose(seg_state[0], ref_h, atol=1e-4, rtol=1e-4), (seg_state[0] - ref_h).abs().max()
    assert torch.allclose(low, ref_low, atol=1e-4, rtol=1e-4), (low - ref_low).abs().max()
    # Segmenter (and so the service) builds the same prompt: its mask is the reference's
    from rosalia.segmenter import Segmenter

    res = Segmenter(model=conv, device="cpu").segment([image], [INSTR])[0]
    up = conv.upscale(ref_low, torch.tensor([[48, 64]]), image.shape)[0]
    sure = up.abs() > 1e-3
    assert np.array_equal(res.mask[sure.numpy()], (up > 0).numpy()[sure.numpy()])
    # ils eval / training batches: the same prompt, followed by the answer
    item = {"image": torch.from_numpy(image), "instruction": INSTR, "answer": "Sure, [SEG].", "mask": torch.zeros(64, 64),
            "presence": True, "row": {}}
    batch_ids = collate_for(conv)([item])["input_ids"][0].tolist()
    assert batch_ids[: len(ids) - 1] == ids[:-1]  # prompt identical up to the appended [SEG]


def test_native_checkpoint_keeps_plain_prompt(tmp_path):
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32"])
    m = build_random(cfg.model)
    save_checkpoint(m, str(tmp_path / "native"))
    back = load_model(str(tmp_path / "native"))
    assert back.spec.get("prompt_style") is None  # native: rosalia.prompting's default, "plain"
    enc = encode_texts(back.tokenizer, [INSTR.lower()], None, 4, prompt_style=back.spec.get("prompt_style"))
    text = back.tokenizer.decode(enc["input_ids"][0])
    assert text.startswith("<s> USER") or text.startswith("USER"), text
    assert "chat" not in text and "<im_start>" not in text


def test_tokenizer_checked_before_weights(source, tmp_path):
    """A tokenizer without <im_start> is refused before the (here unreadable) weights are opened."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(lisa_config(1)))
    write_tokenizer(folder, added={"[SEG]": N_SP})
    (folder / "pytorch_model.bin").write_bytes(b"not a torch file")
    cfg = load_config(None, [])
    with pytest.raises(ModelError, match=r"<im_start> is not in the tokenizer"):
        convert(str(folder), str(tmp_path / "o"), cfg.model)
    write_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(lisa_config(1, vocab_size=N_SP + 2)))  # <im_end> (id 502) untrained
    with pytest.raises(ModelError, match=r"<im_end> has id 502 but the model has only 502 embedding rows"):
        convert(str(folder), str(tmp_path / "o"), cfg.model)
    assert not (tmp_path / "o").exists()


def test_config_json_mismatch_and_projector_keys(source, tmp_path):
    folder, clip, sd, *_ = source
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32"])
    bad = tmp_path / "mismatch"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "config.json").write_text(json.dumps(lisa_config(source[-1], intermediate_size=128, num_key_value_heads=4)))
    with pytest.raises(ModelError, match=r"intermediate_size=128 but model\.layers\.0\.mlp\.gate_proj\.weight is \(96, 64\)"
                                         r".*num_key_value_heads=4 but model\.layers\.0\.self_attn\.k_proj\.weight is \(32, 64\)"):
        convert(str(bad), str(tmp_path / "o1"), cfg.model, vision_tower=str(clip))
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in folder.iterdir():
        if not f.name.startswith("pytorch_model"):
            (odd / f.name).write_bytes(f.read_bytes())
    weird = {k: v for k, v in sd.items() if not k.startswith("model.mm_projector.")}
    weird.update({"model.mm_projector.0.weight": torch.zeros(64, 64), "model.mm_projector.1.weight": torch.zeros(64, 64)})
    save_sharded(weird, odd)
    with pytest.raises(ModelError, match=r"unsupported mm_projector: keys found \['model\.mm_projector\.0\.weight', "
                                         r"'model\.mm_projector\.1\.weight'\]"):
        convert(str(odd), str(tmp_path / "o2"), cfg.model, vision_tower=str(clip))


def test_cli_prompt_style_option(source, tmp_path):
    folder, clip, *_ = source
    out = tmp_path / "ck"
    assert main(["--log-level", "WARNING", "convert-lisa", str(folder), str(out), "--vision-tower", str(clip),
                 "--prompt-style", "llava_v1_no_im_tags", "model.image_size=64", "model.clip_size=32"]) == 0
    assert json.loads((out / "rosalia.json").read_text())["prompt_style"] == "llava_v1_no_im_tags"


def test_s3_folder_source(source, tmp_path, s3_bucket):
    """An s3:// LISA folder: its tokenizer is fetched and checked first, the converted tokenizer saved."""
    from ils.config import StoreConfig
    from ils.store import Store

    folder, clip, *_ = source
    endpoint, bucket = s3_bucket
    st = Store.from_config(StoreConfig(uri=f"s3://{bucket}", endpoint=endpoint))
    for f in folder.iterdir():
        st.write_bytes(f"lisa/{f.name}", f.read_bytes())
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32"])
    summary = convert(f"s3://{bucket}/lisa", str(tmp_path / "ck"), cfg.model, vision_tower=str(clip), store=st)
    assert summary["prompt_style"] == "llava_v1"
    conv = load_model(str(tmp_path / "ck"))
    assert conv.tokenizer.convert_tokens_to_ids(["[SEG]", "<im_start>", "<im_end>"]) == [N_SP, N_SP + 1, N_SP + 2]
