"""Training/eval data for ROSALIA: PAIR rows -> cached tensors -> tokenised, preprocessed batches.

A run folder written by ilsgen holds `pairs/*.parquet` (ils.schema.PAIR) and mask PNGs at
`seg_mask_path` (relative to the run folder); `image_uri` points at a DICOM/PNG (absolute, or
relative to the run folder). `PairDataset.from_run` decodes every image and mask once and caches
them as one `.npz` under `RUN/rosalia-cache/`, so training steps never pay decoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from ils.errors import UserError
from ils.schema import PAIR
from ils.store import Store
from rosalia.model.config import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, SAM_MEAN, SAM_STD
from rosalia.prompting import PromptStyle, get_style, style_of

log = logging.getLogger(__name__)
CACHE_DIR = "rosalia-cache"


class DataError(UserError, ValueError):
    """Training/eval data is missing or malformed."""


# -- decoding -----------------------------------------------------------------------------------
def load_image(store: Store, uri: str, size: int, max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode a DICOM/PNG/JPEG at `uri` into a (size, size) float32 image in [0, 1]."""
    from ils.imageio import read_image, resize_square

    return resize_square(read_image(store, uri, max_pixels=max_pixels).pixels, size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask (any size, 0/255 or bool) -> (size, size) bool, nearest neighbour."""
    from PIL import Image

    m = (np.asarray(mask) > 127 if np.asarray(mask).dtype != bool else np.asarray(mask)).astype(np.uint8) * 255
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != (size, size):
        m = np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST))
    return m > 127


# -- dataset ------------------------------------------------------------------------------------
class PairDataset(Dataset):
    """Pairs with their decoded image (uint8, image_size^2) and target mask (bool, mask_size^2)."""

    def __init__(self, rows: list[dict], images: np.ndarray, image_index: np.ndarray, masks: np.ndarray,
                 mask_index: np.ndarray, image_size: int, mask_size: int):
        self.rows, self.images, self.image_index = rows, images, np.asarray(image_index, dtype=np.int64)
        self.masks, self.mask_index = masks, np.asarray(mask_index, dtype=np.int64)
        self.image_size, self.mask_size = image_size, mask_size
        self.presence = np.array([bool(r["presence"]) for r in rows], dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def repeats(self, global_positive: int = 1) -> np.ndarray | None:
        """Per-pair repeat counts for `EpochPlan` (global positives `global_positive` times); None when all 1."""
        if global_positive <= 1:
            return None
        return np.array([global_positive if r["presence"] and r.get("type") == "global" else 1 for r in self.rows], dtype=np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        mi = self.mask_index[i]
        mask = self.masks[mi] if mi >= 0 else np.zeros((self.mask_size, self.mask_size), dtype=bool)
        return {
            "image": torch.from_numpy(self.images[self.image_index[i]].astype(np.float32) / 255.0),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "instruction": r["instruction"],
            "answer": r["answer"],
            "presence": bool(r["presence"]),
            "row": r,
            "image_key": int(self.image_index[i]),  # same key, same decoded image (collate shares it)
        }

    def augmented(self, shift: float = 0.04, gamma: float = 0.2, gain: float = 0.1, offset: float = 0.05) -> "AugmentedPairs":
        """This dataset with random photometric jitter and small shifts (training only)."""
        return AugmentedPairs(self, shift, gamma, gain, offset)

    def subset(self, idx: Sequence[int]) -> "PairDataset":
        idx = list(idx)
        return PairDataset([self.rows[i] for i in idx], self.images, self.image_index[idx], self.masks,
                           self.mask_index[idx], self.image_size, self.mask_size)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: list[dict], run: Store, image_size: int, mask_size: int,
                  image_loader: Callable[[str], np.ndarray] | None = None, progress: bool = True) -> "PairDataset":
        """Decode the images and masks of `rows` (mask paths relative to `run`)."""
        if not rows:
            raise DataError("no pairs to load")
        uris = sorted({r["image_uri"] for r in rows})
        paths = sorted({r["seg_mask_path"] for r in rows if r.get("presence") and r.get("seg_mask_path")})
        images = np.zeros((len(uris), image_size, image_size), dtype=np.uint8)
        for k, uri in enumerate(tqdm(uris, desc="decode images", disable=not progress)):
            img = image_loader(uri) if image_loader else load_image(run, uri, image_size)
            images[k] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        masks = np.zeros((max(len(paths), 1), mask_size, mask_size), dtype=bool)
        for k, p in enumerate(tqdm(paths, desc="decode masks", disable=not progress)):
            masks[k] = resize_mask(run.read_png(p), mask_size)
        ui, pi = {u: k for k, u in enumerate(uris)}, {p: k for k, p in enumerate(paths)}
        image_index = [ui[r["image_uri"]] for r in rows]
        mask_index = [pi.get(r.get("seg_mask_path"), -1) if r.get("presence") else -1 for r in rows]
        return cls(list(rows), images, np.array(image_index), masks, np.array(mask_index), image_size, mask_size)

    @classmethod
    def concat(cls, parts: Sequence["PairDataset"]) -> "PairDataset":
        """One dataset holding the pairs of `parts` in order (each keeps its own images and masks)."""
        if not parts:
            raise DataError("no datasets to join")
        if len({(p.image_size, p.mask_size) for p in parts}) != 1:
            raise DataError(f"datasets of different sizes: {[(p.image_size, p.mask_size) for p in parts]}")
        image_index, mask_index, img_off, mask_off = [], [], 0, 0
        for p in parts:
            image_index.append(p.image_index + img_off)
            mask_index.append(np.where(p.mask_index >= 0, p.mask_index + mask_off, -1))
            img_off, mask_off = img_off + len(p.images), mask_off + len(p.masks)
        return cls([r for p in parts for r in p.rows], np.concatenate([p.images for p in parts]), np.concatenate(image_index),
                   np.concatenate([p.masks for p in parts]), np.concatenate(mask_index), parts[0].image_size, parts[0].mask_size)

    @classmethod
    def from_run(cls, run: Store, split: str | None = None, image_size: int = 256, mask_size: int = 256,
                 cache: bool = True, limit: int = 0, exclude_studies: frozenset[str] | set[str] = frozenset()) -> "PairDataset":
        """Pairs of one split (None: all) of the run folder `run` (less those of `exclude_studies`),
        cached under RUN/rosalia-cache/."""
        if not run.exists("pairs"):
            raise DataError(f"no pairs/ folder in {run.root_uri}; run `ils gen` first")
        table = run.read_parquet("pairs")
        missing = [f.name for f in PAIR if not f.nullable and f.name not in table.column_names]
        if missing:
            raise DataError(f"pairs in {run.root_uri} lack column(s) {missing}")
        rows = sorted(table.to_pylist(), key=lambda r: r["pair_id"])
        if split:
            rows = [r for r in rows if r.get("split") == split]
        if exclude_studies:
            rows = [r for r in rows if r["study_id"] not in exclude_studies]
        if limit:
            rows = rows[:limit]
        if not rows:
            raise DataError(f"no pairs with split={split!r} in {run.root_uri}")
        key = hashlib.sha1(f"{image_size}|{mask_size}|".encode() + "|".join(r["pair_id"] for r in rows).encode()).hexdigest()[:16]
        rel = f"{CACHE_DIR}/{key}.npz"
        if cache and run.is_file(rel):
            z = np.load(io.BytesIO(run.read_bytes(rel)))
            masks = np.unpackbits(z["masks"], axis=-1)[..., :mask_size].astype(bool)
            log.info("loaded %d pairs from cache %s", len(rows), rel)
            return cls(rows, z["images"], z["image_index"], masks, z["mask_index"], image_size, mask_size)
        ds = cls.from_rows(rows, run, image_size, mask_size)
        if cache:
            buf = io.BytesIO()
            np.savez_compressed(buf, images=ds.images, image_index=ds.image_index, mask_index=ds.mask_index,
                                masks=np.packbits(ds.masks, axis=-1))
            run.write_bytes(rel, buf.getvalue())
        return ds


# -- preprocessing --------------------------------------------------------------------------------
def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def preprocess_images(images: Sequence[np.ndarray] | torch.Tensor, image_size: int, clip_size: int):
    """(clip pixel_values (B,3,c,c), SAM pixel values (B,3,S,S), resized sizes (B,2)).

    SAM: longest side -> image_size, keep aspect, normalise, pad bottom/right with zeros.
    CLIP: the whole image stretched to clip_size (training images are square already).
    """
    sam, clip, sizes = [], [], []
    for img in images:
        t = torch.as_tensor(np.asarray(img, dtype=np.float32) if not torch.is_tensor(img) else img, dtype=torch.float32)
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise DataError(f"expected a non-empty 2-D grey image, got shape {tuple(t.shape)}")
        h, w = t.shape
        scale = image_size / max(h, w)
        rh, rw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        x = t[None, None].expand(1, 3, h, w)
        r = x if (rh, rw) == (h, w) else F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        r = _norm(r, SAM_MEAN, SAM_STD)
        sam.append(F.pad(r, (0, image_size - rw, 0, image_size - rh))[0])
        c = x if (h, w) == (clip_size, clip_size) else F.interpolate(x, size=(clip_size, clip_size), mode="bilinear", align_corners=False, antialias=True)
        clip.append(_norm(c, CLIP_MEAN, CLIP_STD)[0])
        sizes.append((rh, rw))
    return torch.stack(clip), torch.stack(sam), torch.tensor(sizes, dtype=torch.long)


def encode_texts(tokenizer, instructions: Sequence[str], answers: Sequence[str] | None, n_image_tokens: int,
                 left_pad: bool = False, add_seg: bool = False,
                 prompt_style: str | PromptStyle | None = None) -> dict[str, torch.Tensor]:
    """Tokenise prompts of `prompt_style` (+ answers + EOS); `<image>` expands to n_image_tokens tokens.

    The text either side of `<image>` is tokenised on its own, as LLaVA's `tokenizer_image_token`
    does. labels are -100 everywhere except the answer tokens. With `add_seg` (generation) each
    prompt ends with the [SEG] token.
    """
    style = prompt_style if isinstance(prompt_style, PromptStyle) else get_style(prompt_style)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    seqs, labels = [], []
    for i, instr in enumerate(instructions):
        head, tail = style.render(instr).split(IMAGE_TOKEN)
        ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
        ids += tokenizer(head, add_special_tokens=False)["input_ids"] + [image_id] * n_image_tokens
        ids += tokenizer(tail, add_special_tokens=False)["input_ids"]
        lab = [-100] * len(ids)
        if answers is not None:
            ans = tokenizer(" " + answers[i], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids, lab = ids + ans, lab + ans
        elif add_seg:
            ids = ids + tokenizer("[SEG]", add_special_tokens=False)["input_ids"]
            lab = lab + [-100]
        seqs.append(ids)
        labels.append(lab)
    n = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    lab_t = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        sl = slice(n - len(s), n) if left_pad else slice(0, len(s))
        input_ids[i, sl] = torch.tensor(s)
        attn[i, sl] = 1
        lab_t[i, sl] = torch.tensor(l)
    return {"input_ids": input_ids, "attention_mask": attn, "labels": lab_t}


def n_image_tokens(model) -> int:
    return int(model.llava.config.image_seq_length)


def share_slots(keys: Iterable[Hashable]) -> tuple[list[int], list[int]]:
    """(slot of each key, position of each slot's first key): equal keys share one slot, slots
    numbered in the order their key first appears."""
    slot: dict[Hashable, int] = {}
    index, firsts = [], []
    for i, k in enumerate(keys):
        if k not in slot:
            slot[k] = len(firsts)
            firsts.append(i)
        index.append(slot[k])
    return index, firsts


def make_collate(tokenizer, image_size: int, clip_size: int, n_image_tokens: int,
                 prompt_style: str | PromptStyle | None = None) -> Callable[[list[dict]], dict]:
    """Collate `PairDataset` items into a teacher-forced training/eval batch (right padded).

    Items with the same `image_key` share one preprocessed image: `sam_pixel_values` then holds
    the distinct images (U, 3, S, S) and `sam_index` (B,) says which one each pair uses, so the
    SAM image encoder runs once per image (see `EpochPlan(pairs_per_image=)`).
    """

    def collate(items: list[dict]) -> dict[str, Any]:
        keys = [it.get("image_key") for it in items]
        index, firsts = share_slots(keys) if all(k is not None for k in keys) else share_slots(range(len(items)))
        uniq = [items[i]["image"] for i in firsts]
        clip, sam, sizes = preprocess_images(uniq, image_size, clip_size)
        idx = torch.tensor(index, dtype=torch.long)
        text = encode_texts(tokenizer, [it["instruction"] for it in items], [it["answer"] for it in items], n_image_tokens,
                            prompt_style=prompt_style)
        batch = {
            **text,
            "pixel_values": clip[idx],
            "sam_pixel_values": sam,
            "sizes": sizes[idx],
            "masks": torch.stack([it["mask"] for it in items]),
            "presence": torch.tensor([float(it["presence"]) for it in items]),
            "images": torch.stack([it["image"] for it in items]),
            "meta": [it["row"] for it in items],
        }
        if len(uniq) < len(items):
            batch["sam_index"] = idx
        return batch

    return collate


def collate_for(model) -> Callable[[list[dict]], dict]:
    """`make_collate` with the shapes and prompt style of `model`."""
    return make_collate(model.tokenizer, model.spec["image_size"], model.spec["clip_size"], n_image_tokens(model),
                        style_of(model))


# -- epoch plan ---------------------------------------------------------------------------------------
class EpochPlan:
    """Deterministic positive:negative order of one epoch (1:1 by default), resumable anywhere.

    Each epoch holds every positive (positive i `repeats[i]` times, when given) and
    `negative_ratio` times as many negatives drawn at random (without replacement when there are
    enough). At 1:1 positives and negatives alternate, so any even-sized batch is 1:1; at other
    ratios they are spread evenly through the epoch, so every batch is close to the ratio.
    With `groups` (an image id per pair) and `pairs_per_image` g > 1, the epoch's pairs of one
    image are pulled together in runs of up to g, each run at the place of its first pair, so a
    batch holds fewer distinct images and the SAM image encoder runs once per image (LISA also
    trains several conversations per image). The multiset of pairs and the ratio are unchanged.
    The same (seed, epoch, presence, repeats, ratio, groups, g) always gives the same order.
    """

    def __init__(self, seed: int, epoch: int, presence: Sequence[bool], repeats: Sequence[int] | None = None,
                 negative_ratio: float = 1.0, groups: Sequence[int] | None = None, pairs_per_image: int = 1):
        if negative_ratio <= 0:
            raise ValueError("negative_ratio must be positive")
        if pairs_per_image < 1:
            raise ValueError("pairs_per_image must be >= 1")
        self.seed, self.epoch = int(seed), int(epoch)
        pres = np.asarray(presence, dtype=bool)
        rng = np.random.default_rng([self.seed, self.epoch])
        pos, neg = np.flatnonzero(pres), np.flatnonzero(~pres)
        if repeats is not None:  # oversampled positives appear `repeats[i]` times per epoch
            pos = np.repeat(pos, np.maximum(1, np.asarray(repeats, dtype=np.int64)[pos]))
        pos = rng.permutation(pos)
        if len(pos) == 0 or len(neg) == 0:
            self.order = rng.permutation(np.concatenate([pos, neg]))
        elif negative_ratio == 1.0:
            negs = rng.choice(neg, size=len(pos), replace=len(neg) < len(pos))
            self.order = np.stack([pos, negs], axis=1).reshape(-1)
        else:
            k = max(1, int(round(len(pos) * negative_ratio)))
            negs = rng.choice(neg, size=k, replace=len(neg) < k)
            # even spacing: sample i of a list of n sits at (i + 0.5) / n of the epoch
            key = np.concatenate([(np.arange(len(pos)) + 0.5) / len(pos), (np.arange(k) + 0.5) / k])
            self.order = np.concatenate([pos, negs])[np.argsort(key, kind="stable")]
        if groups is not None and pairs_per_image > 1:
            self.order = group_runs(self.order, np.asarray(groups, dtype=np.int64)[self.order], pairs_per_image)

    def __len__(self) -> int:
        return len(self.order)

    def batches(self, batch_size: int, start: int = 0, drop_last: bool = False) -> Iterator[list[int]]:
        """Index lists of `batch_size` from position `start` (a count of samples already consumed)."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        for b in range(start, len(self.order), batch_size):
            chunk = self.order[b : b + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            yield chunk.tolist()


def group_runs(order: np.ndarray, group: np.ndarray, size: int) -> np.ndarray:
    """`order` with the entries of each group gathered in runs of up to `size`, each run at the
    position of its first entry (a stable regrouping: runs keep their internal order)."""
    n = len(order)
    pos = np.arange(n)
    by_group = np.lexsort((pos, group))  # entries sorted by (group, position)
    g_sorted = group[by_group]
    starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
    rank = pos - np.repeat(starts, np.diff(np.r_[starts, n]))  # occurrence number within its group
    run_first = np.empty(n, dtype=np.int64)
    run_start = by_group[pos - rank % size]  # first entry (position) of each entry's run
    run_first[by_group] = run_start
    return order[np.lexsort((pos, run_first))]


class AugmentedPairs:
    """A `PairDataset` whose items get random exposure jitter (gamma, gain, offset) and one small
    translation shared by image and mask (up to `shift` of the side, zero-filled).

    Location words stay true: zones follow the anatomy, which moves with the image. The draws
    come from torch's global RNG, which training checkpoints save and restore, so a resumed
    run sees the same augmented batches as an uninterrupted one."""

    def __init__(self, base: PairDataset, shift: float, gamma: float, gain: float, offset: float):
        self.base, self.shift, self.gamma, self.gain, self.offset = base, shift, gamma, gain, offset
        self.presence, self.rows = base.presence, base.rows

    def __len__(self) -> int:
        return len(self.base)

    @staticmethod
    def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[..., yd, xd] = x[..., ys, xs]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = dict(self.base[i])
        u = torch.rand(5)
        img = it["image"].clamp(0, 1) ** float(np.exp((2 * u[0] - 1) * self.gamma))
        img = img * float(1 + (2 * u[1] - 1) * self.gain) + float((2 * u[2] - 1) * self.offset)
        img, mask = img.clamp(0, 1), it["mask"]
        h, w = img.shape[-2:]
        dy, dx = int(round(float(2 * u[3] - 1) * self.shift * h)), int(round(float(2 * u[4] - 1) * self.shift * w))
        if dy or dx:
            img = self._translate(img, dy, dx)
            mh, mw = mask.shape[-2:]
            mask = self._translate(mask, int(round(dy * mh / h)), int(round(dx * mw / w)))
        it["image"], it["mask"] = img, mask
        it.pop("image_key", None)  # jittered per item: no longer shared with other pairs of the image
        return it


# -- synthetic data (tests and quick experiments) ----------------------------------------------------
def synthetic_run(run: Store, n_studies: int, seed: int = 0, size: int = 128, split_every: int = 5) -> int:
    """Write a SYNTHETIC run folder (PNG images, mask PNGs, pairs/part-0.parquet); returns #pairs.

    Not phantom studies: two dark lung fields, a bright heart, and 0-2 bright blob lesions in a
    lung zone (cardiomegaly: an enlarged heart). Pairs follow ils.templates; every
    `split_every`-th study is `test`, the rest `train`.
    """
    from ils import templates as T
    from ils.paraphrase import paraphrases
    from ils.schema import conform
    from ils.vocab import SIDES, ZONE_KINDS, zone_name

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows: list[dict] = []
    for s in range(n_studies):
        sid = f"syn{seed}-{s:05d}"
        split = "test" if s % split_every == split_every - 1 else "train"
        img = 0.75 + 0.05 * rng.standard_normal((size, size))
        lungs = {}
        for side, cx in (("right", 0.3), ("left", 0.7)):
            lungs[side] = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
            img[lungs[side]] -= 0.45
        big_heart = rng.random() < 0.25
        r = 0.17 if big_heart else 0.11
        heart = ((xx - 0.52) / r) ** 2 + ((yy - 0.68) / (r * 0.8)) ** 2 < 1
        img[heart] = 0.7
        present: dict[str, tuple[np.ndarray, list[str]]] = {}
        if big_heart:
            present["cardiomegaly"] = (heart, ["heart"])
        for lesion in rng.choice(["pneumonia", "atelectasis", "consolidation", "edema", "effusion"], size=rng.integers(0, 3), replace=False):
            side = str(rng.choice(SIDES))
            k = 3 if lesion == "effusion" else int(rng.integers(0, 4))
            cy = 0.2 + 0.6 * (k + 0.5) / 4
            cx = (0.3 if side == "right" else 0.7) + rng.uniform(-0.05, 0.05)
            rx, ry = rng.uniform(0.05, 0.09), rng.uniform(0.04, 0.07)
            blob = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1) & lungs[side]
            if blob.sum() < 10:
                continue
            img[blob] += 0.35
            present[str(lesion)] = (blob, [zone_name(side, ZONE_KINDS[k])])
        uri = f"images/{sid}.png"
        run.write_png(uri, np.clip(np.rint(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8))
        base = dict(study_id=sid, image_uri=run.uri(uri), split=split, sent_idx=None, certainty="definite")

        def add(type_, target, locs, pres, mask_path=None, ans_locs=()):
            rows.append(dict(base, pair_id=f"{sid}-{len(rows)}", instruction=T.instruction(type_, target, locs),
                             answer=T.answer(type_, target, pres, ans_locs or locs), type=type_, target=target, lesion=target,
                             locations=list(ans_locs or locs), presence=pres, seg=pres, seg_mask_path=mask_path, mask_ids=[],
                             paraphrases=paraphrases(type_, target, locs, key=f"{sid}-{len(rows)}")))

        for lesion, (mask, locs) in present.items():
            mp = f"masks/{sid}/{sid}_{lesion}_0.png"
            run.write_png(mp, mask.astype(np.uint8) * 255)
            add("global", lesion, [], True, mp, ans_locs=locs if lesion != "cardiomegaly" else ())
            if lesion != "cardiomegaly":
                add("basic", lesion, locs, True, mp)
        absent = [l for l in ("cardiomegaly", "pneumonia", "atelectasis", "consolidation", "edema", "effusion") if l not in present]
        for lesion in rng.choice(absent, size=min(3, len(absent)), replace=False):
            lesion = str(lesion)
            add("global", lesion, [], False)
            if lesion != "cardiomegaly":
                add("basic", lesion, [zone_name(str(rng.choice(SIDES)), str(rng.choice(ZONE_KINDS)))], False)
    run.write_parquet("pairs/part-0.parquet", conform(rows, PAIR))
    return len(rows)
