"""Evaluation of a ROSALIA model on pairs (SPEC section 4).

Masks come from one teacher-forced pass over prompt + reference answer; text from greedy
generation. Each sample is scored twice: `ungated` (the authors' protocol: mask = logit > 0)
and `gated` (mask emptied when p(present) < threshold, the presence head's decision).
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ils.answers import agrees, decide
from rosalia.data import PairDataset, collate_for, encode_texts
from rosalia.prompting import style_of
from rosalia.metrics import group_report, inter_union, text_correct
from rosalia.segmenter import clean_answer, count_components, remove_small_components

log = logging.getLogger(__name__)

@torch.no_grad()
def evaluate(model, dataset: PairDataset, batch_size: int = 16, cleanup_frac: float = 0.0,
             generate_text: bool = True, max_examples: int = 8, progress: bool = True,
             records_out: list | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(report, examples): metrics grouped by lesion/type, gated and ungated; a few overlays.

    The per-pair records are appended to `records_out` when given."""
    model.eval()
    collate = collate_for(model)
    thr = float(model.spec.get("presence_threshold", 0.5))
    records: list[dict[str, Any]] = []
    examples: list[dict] = []
    cleanup = {"raw_extra_components": [], "clean_extra_components": [], "raw_iou": [], "clean_iou": []}
    frac = cleanup_frac if cleanup_frac > 0 else 0.002
    for b in tqdm(range(0, len(dataset), batch_size), desc="eval", disable=not progress):
        items = [dataset[i] for i in range(b, min(b + batch_size, len(dataset)))]
        batch = collate(items)
        out = model(batch)
        prob = torch.sigmoid(out["presence_logits"]).cpu().numpy()
        preds = (out["mask_logits"] > 0).cpu().numpy()
        answers = [None] * len(items)
        if generate_text:
            enc = encode_texts(model.tokenizer, [it["instruction"] for it in items], None,
                               int(model.llava.config.image_seq_length), left_pad=True, add_seg=True,
                               prompt_style=style_of(model))
            seq, _ = model.generate(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device),
                                    batch["pixel_values"].to(model.device), int(model.spec.get("max_new_tokens", 24)))
            answers = [clean_answer(t) for t in model.tokenizer.batch_decode(seq, skip_special_tokens=True)]
        for i, it in enumerate(items):
            target = it["mask"].numpy() > 0.5
            raw = preds[i]
            gate = model.presence_head is not None and not str(model.spec.get("presence_head")).startswith("untrained")  # converted LISA
            present = bool(prob[i] >= thr) if gate else bool(raw.any())
            gated = raw if present else np.zeros_like(raw)
            if cleanup_frac > 0:
                gated = remove_small_components(gated, cleanup_frac)
            gi, gu = inter_union(gated, target)
            ui, uu = inter_union(raw, target)
            row = it["row"]
            rec = {
                "pair_id": row.get("pair_id"), "type": row["type"], "target": row["target"], "presence": bool(row["presence"]),
                "presence_pred": present, "p_present": float(prob[i]),
                "gated_inter": gi, "gated_union": gu, "gated_empty": not gated.any(),
                "ungated_inter": ui, "ungated_union": uu, "ungated_empty": not raw.any(),
                "answer": answers[i],
                "text_correct": text_correct(row["instruction"], answers[i], row["answer"]) if answers[i] is not None else None,
                "raw_agreed": agrees(row["instruction"], answers[i], present) if answers[i] is not None else None,
            }
            if answers[i] is not None:
                rec["decided_agreed"] = agrees(row["instruction"], decide(row["instruction"], answers[i], present, float(prob[i])).answer, present)
            records.append(rec)
            if rec["presence"] and raw.any():
                cleaned = remove_small_components(raw, frac)
                tc = count_components(target)
                cleanup["raw_extra_components"].append(count_components(raw) - tc)
                cleanup["clean_extra_components"].append(count_components(cleaned) - tc)
                cleanup["raw_iou"].append(ui / uu if uu else 1.0)
                ci, cu = inter_union(cleaned, target)
                cleanup["clean_iou"].append(ci / cu if cu else 1.0)
            if len(examples) < max_examples and (rec["presence"] or len(examples) % 2):
                examples.append({"image": it["image"].numpy(), "target": target, "pred": gated, "instruction": row["instruction"],
                                 "answer": answers[i], "p_present": float(prob[i])})
    report = group_report(records)
    if records_out is not None:
        records_out.extend(records)
    report["cleanup"] = {"min_component_frac": frac, **{k: float(np.mean(v)) if v else None for k, v in cleanup.items()},
                         "n": len(cleanup["raw_iou"])}
    report["answer_agreement"] = agreement_report(records)
    report["presence_threshold"] = thr
    report["n_samples"] = len(records)
    return report, examples


def add_paraphrase_report(report: dict[str, Any], records: list[dict], model, dataset, batch_size: int = 16,
                          cleanup_frac: float = 0.0, generate_text: bool = True) -> None:
    """report["paraphrase"]: the same metrics on the pairs that have a paraphrase, asked with it
    (the raw model, no instruction normalisation), next to the template figures on the same pairs
    (`records`: the template pass's per-pair records from `evaluate(..., records_out=)`)."""
    from rosalia.paraphrased import with_paraphrases

    para = with_paraphrases(dataset)
    if para is None:
        report["paraphrase"] = None
        return
    p_report, _ = evaluate(model, para, batch_size, cleanup_frac, generate_text, max_examples=0, progress=False)
    ids = {r.get("pair_id") for r in para.rows}
    t_report = group_report([r for r in records if r["pair_id"] in ids])
    report["paraphrase"] = {"n": len(para), "template": {"overall": t_report["overall"], "per_type": t_report["per_type"]},
                            "paraphrase": {"overall": p_report["overall"], "per_type": p_report["per_type"]}}


def agreement_report(records: list[dict]) -> dict[str, Any]:
    """How often the answer text agrees with the gated presence decision: raw generation vs the
    reconciled answer (ils.answers.decide); None when no text was generated."""
    def rate(key: str) -> float | None:
        vals = [r[key] for r in records if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return {"raw": rate("raw_agreed"), "decided": rate("decided_agreed"),
            "n": sum(r.get("raw_agreed") is not None for r in records)}


def metrics_table(report: dict[str, Any]) -> str:
    """A plain-text table: per lesion gIoU/cIoU/N-Acc gated (ungated) and text accuracy."""
    def f(x):
        return "  -  " if x is None else f"{100 * x:5.1f}"

    lines = [f"{'group':<18} {'n':>5} {'gIoU':>13} {'cIoU':>13} {'N-Acc':>13} {'text':>6}"]
    rows = [("overall", report["overall"])] + [(k, v) for k, v in report["per_lesion"].items()] + \
           [(f"type:{k}", v) for k, v in report["per_type"].items()]
    for name, blk in rows:
        g, u = blk["gated"], blk["ungated"]
        lines.append(f"{name:<18} {blk['n']:>5} {f(g['gIoU'])} ({f(u['gIoU'])}) {f(g['cIoU'])} ({f(u['cIoU'])}) "
                     f"{f(g['N-Acc'])} ({f(u['N-Acc'])}) {f(blk['text_accuracy'])}")
    lines.append("values in %: gated (ungated teacher-forced protocol)")
    para = report.get("paraphrase")
    if para:
        lines.append(f"same {para['n']} pairs asked as template / as paraphrase (raw model, no normalisation):")
        for name in ["overall", *para["template"]["per_type"]]:
            t = para["template"]["overall"] if name == "overall" else para["template"]["per_type"][name]
            p = para["paraphrase"]["overall"] if name == "overall" else para["paraphrase"]["per_type"].get(name)
            if p is None:
                continue
            lines.append(f"  {name:<16} gIoU {f(t['gated']['gIoU'])} / {f(p['gated']['gIoU'])}   N-Acc {f(t['gated']['N-Acc'])} / "
                         f"{f(p['gated']['N-Acc'])}   text {f(t['text_accuracy'])} / {f(p['text_accuracy'])}")
    agr = report.get("answer_agreement") or {}
    if agr.get("n"):
        lines.append(f"answer text agrees with the presence decision: raw generation {f(agr['raw'])} %, "
                     f"reconciled answer {f(agr['decided'])} % (n={agr['n']})")
    return "\n".join(lines)


def figure_png(report: dict[str, Any], examples: list[dict]) -> bytes:
    """Per-lesion bars (gIoU, cIoU, N-Acc; gated and ungated) and example overlays, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lesions = list(report["per_lesion"])
    n_ex = min(len(examples), 8)
    fig = plt.figure(figsize=(14, 4 + 2.2 * ((n_ex + 3) // 4)))
    gs = fig.add_gridspec(1 + max(1, (n_ex + 3) // 4), 4)
    ax = fig.add_subplot(gs[0, :])
    x = np.arange(len(lesions))
    width = 0.13
    for k, (metric, mode) in enumerate([(m, g) for m in ("gIoU", "cIoU", "N-Acc") for g in ("gated", "ungated")]):
        vals = [report["per_lesion"][l][mode][metric] or 0.0 for l in lesions]
        ax.bar(x + (k - 2.5) * width, vals, width, label=f"{metric} {mode}", alpha=1.0 if mode == "gated" else 0.5)
    ax.set_xticks(x, lesions)
    ax.set_ylim(0, 1)
    ax.legend(ncol=6, fontsize=7)
    ax.set_title("per-lesion metrics")
    for j, ex in enumerate(examples[:n_ex]):
        a = fig.add_subplot(gs[1 + j // 4, j % 4])
        a.imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
        h, w = ex["image"].shape
        for m, color in ((ex["target"], "red"), (ex["pred"], "lime")):
            if m.any():
                import PIL.Image

                mm = np.asarray(PIL.Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), PIL.Image.Resampling.NEAREST)) > 127
                a.contour(mm, levels=[0.5], colors=color, linewidths=0.8)
        a.set_title(f"{ex['instruction'][:40]}\np={ex['p_present']:.2f} {str(ex['answer'] or '')[:40]}", fontsize=6)
        a.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_report(store, out: str, report: dict[str, Any], examples: list[dict]) -> dict[str, str]:
    """report.json + report.png into the store under `out`."""
    j = store.write_text(f"{out}/report.json", json.dumps(report, indent=2))
    p = store.write_bytes(f"{out}/report.png", figure_png(report, examples))
    return {"json": j, "png": p}
