"""GPU-class ilsgen backends (radedit, cxas, yolo) and `ils detector train`, run on the CPU with
small randomly initialised models of the real classes. Every test also checks that nothing tried
to reach a non-loopback address (no hub, font or asset downloads)."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from ils.config import StageConfig
from ils.errors import UserError
from ils.vocab import ATOMIC_REGIONS, LESIONS, region_bit
from ilsgen.stages.base import Box

torch = pytest.importorskip("torch")


# -- no traffic off the machine ---------------------------------------------------------------------
def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # unix sockets
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: would need DNS, i.e. the network


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse (and record) every connection to a non-loopback address during the test."""
    attempts: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guard(address):
        if not _is_loopback(address):
            attempts.append(address)
            raise OSError(f"network disabled in tests: {address}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None:
            guard((host if isinstance(host, str) else host.decode(), 0))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"code tried to reach the network: {attempts}"


# -- radedit ---------------------------------------------------------------------------------------
def build_tiny_radedit(root: Path) -> Path:
    """A tiny random RadEdit-layout folder: unet/, vae/, text_encoder/ (BERT + WordLevel tokenizer), scheduler/."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64,
    ).save_pretrained(root / "vae")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "no", "acute", "cardiopulmonary", "process"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", model_max_length=16
    ).save_pretrained(root / "text_encoder")
    BertModel(BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32,
    )).save_pretrained(root / "text_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  timestep_spacing="trailing", steps_offset=1).save_pretrained(root / "scheduler")  # RadEdit's values
    return root


@pytest.fixture(scope="module")
def radedit_dir(tmp_path_factory) -> Path:
    return build_tiny_radedit(tmp_path_factory.mktemp("radedit") / "radedit")


RADEDIT_OPTS = {"steps": 2, "size": 32, "strength": 0.6, "sigma": 1.0}


def test_radedit_maps_shapes_ranges_and_lung_mask(radedit_dir):
    from ilsgen.stages.anomaly_radedit import RadEditAnomaly

    backend = RadEditAnomaly(StageConfig(backend="radedit", weights=str(radedit_dir), batch_size=2, options=dict(RADEDIT_OPTS, guidance=2.0)), 48)
    rng = np.random.default_rng(0)
    images = [rng.random((48, 48), dtype=np.float32), rng.random((60, 52), dtype=np.float32)]  # second one off-size
    half = np.zeros((48, 48), np.uint16)
    half[:, :24] = region_bit("right lung")
    maps = backend.anomaly_maps(images, [half, np.zeros((48, 48), np.uint16)])
    assert [m.shape for m in maps] == [(48, 48), (48, 48)]
    for m in maps:
        assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0 and m.max() > 0.5
    assert maps[0][:, 24:].max() == 0.0 and maps[0][:, :24].max() > 0  # kept to the lungs
    assert maps[1][:, 24:].max() > 0  # empty anatomy: no masking
    healthy = backend.healthy(images[:1])
    assert healthy[0].shape == (48, 48) and 0.0 <= healthy[0].min() <= healthy[0].max() <= 1.0
    again = backend.anomaly_maps(images, [half, np.zeros((48, 48), np.uint16)])
    np.testing.assert_allclose(again[0], maps[0], atol=1e-5)  # seeded: reproducible


def test_radedit_from_s3_and_bad_weights(radedit_dir, s3_bucket, tmp_path):
    from ils.store import S3Options, Store
    from ilsgen.stages.anomaly_radedit import RadEditAnomaly

    endpoint, bucket = s3_bucket
    store = Store(f"s3://{bucket}/models/radedit", S3Options(endpoint=endpoint))
    for f in radedit_dir.rglob("*"):
        if f.is_file():
            store.write_bytes(str(f.relative_to(radedit_dir)), f.read_bytes())
    opts = dict(RADEDIT_OPTS, s3_endpoint=endpoint, cache_dir=str(tmp_path / "cache"))
    backend = RadEditAnomaly(StageConfig(backend="radedit", weights=f"s3://{bucket}/models/radedit", options=opts), 32)
    (m,) = backend.anomaly_maps([np.full((32, 32), 0.5, np.float32)], [])
    assert m.shape == (32, 32) and 0.0 <= m.min() <= m.max() <= 1.0
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").rglob("diffusion_pytorch_model.safetensors"))

    with pytest.raises(UserError, match="not found"):
        RadEditAnomaly(StageConfig(backend="radedit", weights=str(tmp_path / "nope")), 32)
    with pytest.raises(UserError, match="lack the unet"):
        RadEditAnomaly(StageConfig(backend="radedit", weights=str(tmp_path / "cache")), 32)
    with pytest.raises(UserError, match=r"no radedit weights .* configured"):
        RadEditAnomaly(StageConfig(backend="radedit"), 32)
    with pytest.raises(UserError, match="strength"):
        RadEditAnomaly(StageConfig(backend="radedit", weights=str(radedit_dir), options={"strength": 1.5}), 32)


def _radedit(radedit_dir, **opts):
    from ilsgen.stages.anomaly_radedit import RadEditAnomaly

    return RadEditAnomaly(StageConfig(backend="radedit", weights=str(radedit_dir), batch_size=2,
                                      options=dict(RADEDIT_OPTS, **opts)), 32)


def test_radedit_inversion_is_exact(radedit_dir):
    """Edit-friendly DDPM inversion: the reverse process with the kept noise returns x_0."""
    from ilsgen.stages.radedit_editing import Schedule, edit, invert

    backend = _radedit(radedit_dir, steps=4, guidance=3.0)
    sched = Schedule.from_scheduler(backend.scheduler, 4)
    assert sched.timesteps.tolist() == [999, 749, 499, 249]  # trailing spacing
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    inv = invert(backend._unet, sched, x0, backend.source.expand(2, -1, -1), torch.Generator().manual_seed(1))
    ones, zeros = torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    same = edit(backend._unet, sched, inv, zeros, backend.source.expand(2, -1, -1), None, 1.0)
    torch.testing.assert_close(same, x0, atol=1e-5, rtol=1e-5)  # same prompt, no guidance, edit everywhere: x_0
    assert torch.equal(edit(backend._unet, sched, inv, ones, backend.cond.expand(2, -1, -1), None, 1.0), x0)
    cond, uncond = backend.cond.expand(2, -1, -1), backend.uncond.expand(2, -1, -1)
    edited = edit(backend._unet, sched, inv, zeros, cond, uncond, 3.0)
    assert (edited - x0).abs().max() > 1e-2  # the edit prompt with guidance does change the latents
    half = zeros.clone()
    half[..., :8] = 1.0  # keep the left half
    part = edit(backend._unet, sched, inv, half, cond, uncond, 3.0)
    assert torch.equal(part[..., :8], x0[..., :8]) and (part[..., 8:] - x0[..., 8:]).abs().max() > 1e-2


def test_radedit_masks_and_guidance(radedit_dir):
    rng = np.random.default_rng(3)
    images = [rng.random((32, 32), dtype=np.float32) for _ in range(2)]
    mask = np.zeros((32, 32), bool)
    mask[8:24, 4:14] = True
    w1, w5 = _radedit(radedit_dir, guidance=1.0), _radedit(radedit_dir, guidance=5.0)
    empty = w5.healthy(images, [np.zeros((32, 32), bool)] * 2)
    for im, h in zip(images, empty):
        np.testing.assert_allclose(h, im, atol=1e-6)  # empty edit mask: the input comes back
    h1, h5 = w1.healthy(images, [mask, mask]), w5.healthy(images, [mask, mask])
    for im, a, b in zip(images, h1, h5):
        assert np.array_equal(a[~mask], im[~mask]) and np.array_equal(b[~mask], im[~mask])  # outside: never changed
        assert np.abs(a[mask] - im[mask]).max() > 1e-3  # inside: edited
        assert np.abs(a[mask] - b[mask]).max() > 1e-4  # guidance changes the edit region only
    # the edit mask comes from the anatomy map's lungs, dilated
    lungs = np.zeros((32, 32), np.uint16)
    lungs[10:20, 10:20] = region_bit("left lung base")
    (m,) = w5.edit_masks([lungs], 1)
    assert m[10:20, 10:20].all() and m[5, 15] and not m[0, 0] and m.sum() > 100
    assert w5.edit_masks([np.zeros((32, 32), np.uint16)], 1) == [None]  # no lungs: edit the whole image


def test_radedit_scheduler_checked_prompt_unmasked_and_sdedit(radedit_dir, tmp_path, caplog):
    import shutil

    from diffusers import DDIMScheduler

    sd_like = tmp_path / "sd"
    shutil.copytree(radedit_dir, sd_like)
    shutil.rmtree(sd_like / "scheduler")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(sd_like / "scheduler")
    with pytest.raises(UserError, match=r"beta_schedule='scaled_linear' \(RadEdit: 'linear'\).*timestep_spacing"):
        _radedit(sd_like)
    with caplog.at_level("WARNING"):
        _radedit(sd_like, scheduler_override=True)
    assert "override set" in caplog.text
    backend = _radedit(radedit_dir)
    tok = backend.tokenizer([backend.prompt], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():  # the model card's pipeline: input ids only, no attention mask
        want = backend.text_encoder(input_ids=tok["input_ids"]).last_hidden_state
        masked = backend.text_encoder(**tok).last_hidden_state
    assert torch.equal(backend.cond, want) and not torch.allclose(want, masked)
    sd = _radedit(radedit_dir, method="sdedit", strength=0.5)
    (m,) = sd.anomaly_maps([np.random.default_rng(0).random((32, 32), dtype=np.float32)], [])
    assert m.shape == (32, 32) and 0.0 <= m.min() <= m.max() <= 1.0
    with pytest.raises(UserError, match="method"):
        _radedit(radedit_dir, method="ddim")


# -- cxas ------------------------------------------------------------------------------------------
def test_cxas_class_table_and_bitmap():
    from ilsgen.stages.anatomy_cxas import CXAS_CLASSES, REGION_TO_CHANNEL, probs_to_bitmap

    assert len(CXAS_CLASSES) == 159 == len(set(CXAS_CLASSES))
    expected = {0: "spine", 36: "posterior 12th rib right", 38: "anterior 11th rib right", 41: "posterior 11th rib left",
                82: "12th rib", 83: "posterior 11th rib", 105: "diaphragm", 121: "heart", 134: "lung",
                141: "right upper zone lung", 144: "right apical zone lung", 147: "left lung base", 158: "breast right"}
    assert {i: CXAS_CLASSES[i] for i in expected} == expected
    assert REGION_TO_CHANNEL["heart"] == 121 and sorted(REGION_TO_CHANNEL.values())[1:] == list(range(141, 149))
    present = np.zeros((159, 2, 2), bool)
    present[121, 0, 0] = True
    present[147, 0, :] = True
    bits = probs_to_bitmap(present)
    assert bits.dtype == np.uint16
    assert bits[0, 0] == region_bit("heart") | region_bit("left lung base")
    assert bits[0, 1] == region_bit("left lung base") and bits[1].sum() == 0


def _cxas_checkpoint(path: Path, on: tuple[str, ...]) -> Path:
    """A random CXAS UNet checkpoint whose output is `on` everywhere (1x1 head zeroed, biases set)."""
    from ilsgen.stages.anatomy_cxas import CXAS_CLASSES, CxasUNet

    torch.manual_seed(0)
    net = CxasUNet()
    with torch.no_grad():
        net.head.out.conv.weight.zero_()
        net.head.out.conv.bias.fill_(-10.0)
        for name in on:
            net.head.out.conv.bias[CXAS_CLASSES.index(name)] = 10.0
    state = {f"module.{k}": (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, path)
    return path


def test_cxas_backend_with_random_unet(tmp_path):
    from ilsgen.stages.anatomy_cxas import CHECKPOINT_NAME, CxasAnatomy

    _cxas_checkpoint(tmp_path / CHECKPOINT_NAME, on=("heart", "left lung base", "liver"))
    cfg = StageConfig(backend="cxas", weights=str(tmp_path), batch_size=2, options={"input_size": 64})
    backend = CxasAnatomy(cfg, 40)
    maps = backend.segment([np.random.default_rng(1).random((40, 40), dtype=np.float32) for _ in range(3)])
    assert len(maps) == 3
    want = region_bit("heart") | region_bit("left lung base")  # the liver maps to nothing
    for m in maps:
        assert m.shape == (40, 40) and m.dtype == np.uint16
        assert np.all(m == want)
    assert all(r in ATOMIC_REGIONS for r in ("heart", "left lung base"))


def test_cxas_errors(tmp_path):
    from ilsgen.stages.anatomy_cxas import CxasAnatomy

    with pytest.raises(UserError, match="pip install cxas"):
        CxasAnatomy(StageConfig(backend="cxas"), 32)
    with pytest.raises(UserError, match="no CXAS checkpoint"):
        CxasAnatomy(StageConfig(backend="cxas", weights=str(tmp_path)), 32)
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"backbone.backbone.layer0.0.weight": torch.zeros(64, 3, 7, 7)}}, bad)
    with pytest.raises(UserError, match="missing keys"):
        CxasAnatomy(StageConfig(backend="cxas", weights=str(bad)), 32)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read CXAS checkpoint"):
        CxasAnatomy(StageConfig(backend="cxas", weights=str(tmp_path / "junk.pth")), 32)


def test_cxas_resizes_like_the_cxas_package(tmp_path):
    """Input at 64 px from a 40 px image: cxas's own order (normalise, then F.interpolate's default nearest)."""
    import torch.nn.functional as F

    from ilsgen.stages.anatomy_cxas import CHECKPOINT_NAME, IMAGENET_MEAN, IMAGENET_STD, CxasAnatomy

    _cxas_checkpoint(tmp_path / CHECKPOINT_NAME, on=("heart",))
    backend = CxasAnatomy(StageConfig(backend="cxas", weights=str(tmp_path), options={"input_size": 64}), 40)
    seen = []
    real = backend.model._forward
    backend.model._forward = lambda x: (seen.append(x.clone()), real(x))[1]
    image = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    backend.segment([image])
    t = torch.from_numpy(image)[None].repeat(3, 1, 1)
    t = (t - torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)) / torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    torch.testing.assert_close(seen[0], F.interpolate(t[None], 64))  # cxas: F.interpolate(array.unsqueeze(0), 512)
    smooth = CxasAnatomy(StageConfig(backend="cxas", weights=str(tmp_path), options={"input_size": 64, "input_resize": "bilinear"}), 40)
    smooth.model._forward = lambda x: (seen.append(x.clone()), real(x))[1]
    smooth.segment([image])
    assert not torch.allclose(seen[1], seen[0])
    with pytest.raises(UserError, match="input_resize"):
        CxasAnatomy(StageConfig(backend="cxas", weights=str(tmp_path), options={"input_resize": "area"}), 40)


# -- yolo + detector training ------------------------------------------------------------------------
def write_phantom_folder(root: Path, n: int = 8, size: int = 96) -> Path:
    """A synthetic folder in the `ils sample` layout: manifest.parquet, images, truth/masks.parquet + PNGs."""
    from ils.schema import MASK, STUDY, conform
    from ils.store import Store

    store = Store(str(root))
    rng = np.random.default_rng(0)
    studies, masks = [], []
    for i in range(n):
        img = (rng.random((size, size)) * 40 + 40).astype(np.uint8)
        studies.append({"study_id": f"p{i}", "image_uri": f"images/p{i}.png", "report": "synthetic", "split": ["train", "train", "val", "test"][i % 4]})
        if i % 4 == 1:  # a background image
            store.write_png(f"images/p{i}.png", img)
            continue
        mask = np.zeros((size, size), np.uint8)
        y, x = (int(v) for v in rng.integers(8, size // 2, 2))
        mask[y : y + 30, x : x + 30] = 255
        mask[2:8, 2:8] = 255  # a second component
        img[mask > 0] = 220
        store.write_png(f"images/p{i}.png", img)
        store.write_png(f"truth/masks/p{i}_effusion_0.png", mask)
        masks.append({"study_id": f"p{i}", "mask_id": f"p{i}_effusion_0", "lesion": "effusion", "instance_idx": 0,
                      "mask_uri": f"masks/p{i}_effusion_0.png", "bbox": [x / size, y / size, (x + 30) / size, (y + 30) / size]})
    store.write_parquet("manifest.parquet", conform(studies, STUDY))
    store.write_parquet("truth/masks.parquet", conform(masks, MASK))
    return root


def test_phantom_boxes_from_mask_components(tmp_path):
    from ils.store import Store
    from ilsgen.detector_train import phantom_images

    images = phantom_images(Store(str(write_phantom_folder(tmp_path / "ph"))))
    assert len(images) == 6  # test split left out
    by_key = {im.key: im for im in images}
    assert by_key["p1"].boxes == [] and by_key["p2"].split == "val"
    boxes = by_key["p0"].boxes
    assert len(boxes) == 2 and {b.label for b in boxes} == {"effusion"}
    small = min(boxes, key=lambda b: b.x1 - b.x0)
    assert small.x0 == pytest.approx(2 / 96) and small.x1 == pytest.approx(8 / 96)


def test_vindr_csv_to_yolo_dataset(tmp_path):
    from ils.store import Store
    from ilsgen.detector_train import vindr_images, write_yolo_dataset

    store = Store(str(tmp_path))
    for name, shape in (("a1", (50, 100)), ("b2", (40, 40)), ("c3", (40, 40))):
        store.write_png(f"imgs/{name}.png", np.full(shape, 128, np.uint8))
    store.write_text("boxes.csv", "\n".join([
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max,width,height",
        "a1,R1,Pleural effusion,10,5,60,25,,",
        "a1,R2,Nodule/Mass,1,1,5,5,,",
        "b2,R1,No finding,,,,,,",
        "c3,R1,Cardiomegaly,100,100,300,200,400,400",
        "zz,R1,Cardiomegaly,1,1,2,2,,",
    ]) + "\n")
    images = vindr_images(store, "boxes.csv", "imgs", val_fraction=0.0)
    assert sorted(im.key for im in images) == ["a1", "b2", "c3"]
    data_yaml, counts = write_yolo_dataset(images, store, tmp_path / "ds", 32)
    data = json.loads(data_yaml.read_text())
    assert data["val"] == "images/train" and list(data["names"].values()) == list(LESIONS)
    assert counts["boxes"] == {"effusion": 1, "cardiomegaly": 1} and counts["images"]["train"] == 3
    labels = {p.stem: p.read_text().split() for p in (tmp_path / "ds" / "labels" / "train").glob("*.txt")}
    rows = sorted(labels.values(), key=len)
    assert rows[0] == []  # the "No finding" image is background
    eff = next(r for r in rows if r and int(r[0]) == LESIONS.index("effusion"))
    assert [float(v) for v in eff[1:]] == pytest.approx([0.35, 0.3, 0.5, 0.4])  # normalised by the 100x50 image
    card = next(r for r in rows if r and int(r[0]) == LESIONS.index("cardiomegaly"))
    assert [float(v) for v in card[1:]] == pytest.approx([0.5, 0.375, 0.5, 0.25])  # by the stated 400x400 frame


def test_detector_train_cli_then_yolo_backend(tmp_path):
    from ils.cli import main
    from ilsgen.stages.detect_yolo import YoloDetector

    phantom = write_phantom_folder(tmp_path / "ph")
    out = tmp_path / "det"
    rc = main(["detector", "train", "--boxes", str(phantom), "--out", str(out), "--epochs", "1", "--imgsz", "64",
               "--batch", "8", "--device", "cpu", f"store.uri={tmp_path}"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["boxes"] == {"effusion": 8} and summary["images"] == {"train": 4, "val": 2}
    assert (out / "best.pt").stat().st_size > 100_000

    cfg = StageConfig(backend="yolo", weights=str(out / "best.pt"), batch_size=2, options={"imgsz": 64, "conf": 0.0, "max_det": 5})
    det = YoloDetector(cfg, 80)
    assert det.labels[LESIONS.index("effusion")] == "effusion"
    rng = np.random.default_rng(3)
    boxes = det.detect([rng.random((80, 80), dtype=np.float32) for _ in range(3)], [])
    assert len(boxes) == 3 and all(isinstance(b, list) for b in boxes)
    flat = [b for bs in boxes for b in bs]
    assert flat, "conf=0 must return candidate boxes"
    for b in flat:
        assert isinstance(b, Box) and 0 <= b.x0 <= b.x1 <= 80 and 0 <= b.y0 <= b.y1 <= 80 and 0 <= b.score <= 1
        assert b.label in LESIONS


def test_yolo_refuses_hub_names_and_bad_files(tmp_path):
    from ilsgen.detector_train import DetectorTrainError, _model_source
    from ilsgen.stages.detect_yolo import YoloDetector, lesion_for

    for name in ("yolov8n.pt", "ultralytics/yolov8n"):
        with pytest.raises(UserError, match="not a local file"):
            YoloDetector(StageConfig(backend="yolo", weights=name), 64)
    with pytest.raises(UserError, match="needs gen.detect.weights"):
        YoloDetector(StageConfig(backend="yolo"), 64)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(UserError, match=".pt or .yaml"):
        YoloDetector(StageConfig(backend="yolo", weights=str(tmp_path / "w.bin")), 64)
    with pytest.raises(DetectorTrainError, match="would download"):
        _model_source("yolov8n.pt", None)
    assert lesion_for("Pleural effusion") == "effusion" and lesion_for("Lung Opacity") == "opacity"
    assert lesion_for("Nodule/Mass") is None and lesion_for("Nodule/Mass", {"nodule/mass": "opacity"}) == "opacity"


def test_registry_names_these_backends():
    from ilsgen.stages.anatomy_cxas import CxasAnatomy
    from ilsgen.stages.anomaly_radedit import RadEditAnomaly
    from ilsgen.stages.detect_yolo import YoloDetector
    from ilsgen.stages.registry import backend_class

    assert backend_class("anatomy", "cxas") is CxasAnatomy
    assert backend_class("anomaly", "radedit") is RadEditAnomaly
    assert backend_class("detect", "yolo") is YoloDetector


def test_detector_cli_errors_are_one_line(tmp_path, capsys):
    from ils.cli import main

    rc = main(["detector", "train", "--boxes", str(tmp_path / "none"), "--out", str(tmp_path / "o"), f"store.uri={tmp_path}"])
    assert rc == 2 and "manifest.parquet" in capsys.readouterr().err
    (tmp_path / "b.csv").write_text("image_id,class_name\n")
    rc = main(["detector", "train", "--boxes", str(tmp_path / "b.csv"), "--out", str(tmp_path / "o"), f"store.uri={tmp_path}"])
    assert rc == 2 and "--images" in capsys.readouterr().err
