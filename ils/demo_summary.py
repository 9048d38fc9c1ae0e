"""What `ils demo` tells a person: a short summary per stage and a final summary, read back from
the files each stage wrote (never from its terminal output)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Outputs:
    """Where the demo's stages write (store-relative) and the served reply once there is one."""

    store: Any
    run: str
    checkpoint: str
    eval_out: str
    truth_eval_out: str
    real_eval_out: str = "real-eval"
    real_model_out: str = "real-eval-model"
    truth_real_eval_out: str = "eval-truth-real"  # the truth pairs of the studies on real radiographs
    reply: Optional[dict] = None
    notes: dict = field(default_factory=dict)

    def json(self, rel: str) -> Optional[dict]:
        try:
            return json.loads(self.store.read_text(rel))
        except Exception:  # a skipped or failed stage: no figures
            return None


def _pct(v) -> str:
    return "  -  " if v is None else f"{100 * v:5.1f}"


def eval_lines(report: Optional[dict]) -> list[str]:
    """Overall and per-type gated figures, and the answer agreement, of an `ils eval` report."""
    if not report:
        return ["(no report)"]
    lines = [f"{'pairs':<20}{'n':>6}{'gIoU':>7}{'cIoU':>7}{'N-Acc':>7}{'text':>7}"]
    rows = [("all", report["overall"])] + [(k, v) for k, v in report.get("per_type", {}).items()]
    for name, blk in rows:
        g = blk["gated"]
        lines.append(f"{name:<20}{blk['n']:>6}{_pct(g['gIoU']):>7}{_pct(g['cIoU']):>7}{_pct(g['N-Acc']):>7}{_pct(blk['text_accuracy']):>7}")
    agr = report.get("answer_agreement") or {}
    if agr.get("n"):
        lines.append(f"answer text agrees with the presence decision: raw generation {_pct(agr['raw']).strip()} %, "
                     f"served answer {_pct(agr['decided']).strip()} %")
    para = report.get("paraphrase")
    if para:
        t, p = para["template"]["overall"], para["paraphrase"]["overall"]
        lines.append(f"same {para['n']} pairs asked as paraphrases (raw model): gIoU {_pct(t['gated']['gIoU']).strip()} -> "
                     f"{_pct(p['gated']['gIoU']).strip()}, N-Acc {_pct(t['gated']['N-Acc']).strip()} -> "
                     f"{_pct(p['gated']['N-Acc']).strip()}, text {_pct(t['text_accuracy']).strip()} -> {_pct(p['text_accuracy']).strip()}")
    lines.append("values in %, presence-gated masks")
    return lines


def real_lines(record: Optional[dict]) -> list[str]:
    """Per set: lung Dice and lesion-mask IoU next to the whole-lung answer, on the images the
    shipped anatomy network never saw (`held_out`), else on all."""
    if not record:
        return []
    lines = []
    for name, entry in record.get("per_set", {}).items():
        held = (entry.get("held_out") or {}).get("anatomy") or {}
        group = "held_out" if held.get("n") else "all"
        blk = entry.get(group) or {}
        dice = (blk.get("anatomy") or {}).get("lung_dice") or {}
        parts = [f"lung Dice {dice.get('mean', float('nan')):.3f} (min {dice.get('min', float('nan')):.3f})"] if dice else []
        for lesion, v in (blk.get("lesions") or {}).items():
            if v.get("n"):
                parts.append(f"{lesion} IoU {v['mean_iou']:.3f} vs whole lung {v['whole_lung_mean_iou']:.3f} (n={v['n']})")
        label = "held out" if group == "held_out" else "all, incl. images the network was trained on"
        lines.append(f"{name} [{label}, {blk.get('anatomy', {}).get('n', '?')} images]: " + "; ".join(parts))
    return lines


#: issue 14's targets on the development split (ilsgen.real_eval_model.TARGETS, kept import-free here)
def model_lines(record: Optional[dict]) -> list[str]:
    """The model's real-image figures (`ils real-eval --checkpoint`): per set, held-out images
    first, then all images (optimistic), next to the whole-lung answer and issue 14's targets."""
    from ilsgen.real_eval_model import TARGETS

    if not record or "model" not in record:
        return []
    lines = []
    for group, label in (("held_out", "held out"), ("all", "all, incl. possible training bases")):
        for name, entry in record.get("per_set", {}).items():
            m = (entry.get(group) or {}).get("model")
            if not m or not m.get("n"):
                continue
            parts = []
            for lesion in ("opacity", "consolidation"):
                b = m.get(lesion) or {}
                if b.get("gIoU") is not None:
                    parts.append(f"{lesion} gIoU {b['gIoU']:.3f} (target {TARGETS[f'{lesion}_gIoU']:.2f}; whole lung "
                                 f"{b['whole_lung_gIoU']:.3f}; said present on {_pct(b['present_when_outlined']).strip()} % "
                                 f"of {b['n_outlined']} outlined)")
            c = m.get("consolidation") or {}
            if c.get("absent_when_not_outlined") is not None:
                parts.append(f"absent when no consolidation outline {_pct(c['absent_when_not_outlined']).strip()} % "
                             f"(target {100 * TARGETS['consolidation_absence']:.0f} %, n={c['n_not_outlined']})")
            note = " [TB not outlined: not a specificity]" if entry.get("model_note") else ""
            lines.append(f"{name} [{label}, {m['n']} images]: " + "; ".join(parts) + note)
    return lines


def stage_summary(name: str, out: Outputs) -> list[str]:
    """A few lines for the terminal after stage `name`."""
    store = out.store
    if name == "sample":
        from ilsgen.manifest import read_manifest

        rows = read_manifest(store, "phantoms/manifest.parquet").to_pylist()
        splits: dict[str, int] = {}
        for r in rows:
            splits[r["split"]] = splits.get(r["split"], 0) + 1
        lines = [f"{len(rows)} synthetic phantom studies (" + ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
                 + f") in {store.uri('phantoms')}"]
        if store.exists("phantoms/truth/sources.parquet"):
            src = store.read_parquet("phantoms/truth/sources.parquet").to_pylist()
            real = [r for r in src if r["source"] != "procedural"]
            if real:
                lines.append(f"{len(real)} of them are synthetic lesions drawn on {len({r['base_name'] for r in real})} real "
                             "radiographs (sample.real_base; their held-out fifth is never a base)")
        return lines
    if name == "gen":
        from ilsgen.summary import format_summary

        summary = out.json(f"{out.run}/summary.json")
        return format_summary(summary).splitlines() if summary else ["(no summary.json)"]
    if name == "export":
        return [f"MIMIC-ILS export in {store.uri(out.run)}"]
    if name == "gen-eval":
        from ils.commands.gen_eval import table

        res = out.json(f"{out.run}/quality.json")
        return table(res).splitlines() if res else ["(no quality.json)"]
    if name == "real-eval":
        return (real_lines(out.json(f"{out.real_eval_out}/real_eval.json")) or ["(no real_eval.json)"]) + [
            f"JSON and overlays of the worst and best cases in {store.uri(out.real_eval_out)}"]
    if name == "real-eval-model":
        return (model_lines(out.json(f"{out.real_model_out}/real_eval.json")) or ["(no real_eval.json)"]) + [
            f"JSON and the model's worst and best masks in {store.uri(out.real_model_out)}"]
    if name == "train":
        return [f"model exported to {store.uri(out.checkpoint)}"]
    if name == "eval":
        return ["model on ilsgen's test pairs:"] + eval_lines(out.json(f"{out.eval_out}/report.json"))
    if name == "truth-pairs":
        return [f"pairs from the phantoms' ground truth in {store.uri('truth-test')}"]
    if name == "truth-pairs-real":
        return [f"pairs from the ground truth of the test studies on real radiographs in {store.uri('truth-test-real')}"]
    if name in ("eval-truth", "eval-truth-real"):
        from ils.label_ceiling import compare_lines

        rel, what = ((out.truth_eval_out, "the phantoms' ground-truth pairs") if name == "eval-truth" else
                     (out.truth_real_eval_out, "the ground-truth pairs of the studies on real radiographs"))
        report = out.json(f"{rel}/report.json")
        return [f"model on {what}:"] + eval_lines(report) + compare_lines((report or {}).get("comparison"))
    if name == "serve":
        r = out.reply or {}
        return [f"asked: {r.get('instruction')!r}", f"answer: {r.get('message')}  (model format: {r.get('answer')!r})"]
    return []


def _overall(report: Optional[dict]) -> str:
    if not report:
        return "not run"
    g = report["overall"]["gated"]
    agr = report.get("answer_agreement") or {}
    return (f"gIoU {_pct(g['gIoU']).strip()} %, cIoU {_pct(g['cIoU']).strip()} %, N-Acc {_pct(g['N-Acc']).strip()} %, "
            f"text {_pct(report['overall']['text_accuracy']).strip()} %, raw answer agreement {_pct(agr.get('raw')).strip()} %"
            f" (n={report.get('n_samples')})")


def _ceiling(head: str, comp: dict) -> str:
    lab = comp["labels_vs_truth"]
    return (f"{head}gIoU {_pct(lab['gIoU']).strip()} %, cIoU {_pct(lab['cIoU']).strip()} %, "
            f"N-Acc {_pct(lab['N-Acc']).strip()} % (the label ceiling; limits: {comp['limits']})")


def final_summary(out: Outputs, cfg, config_path: Optional[str], log_dir: str, seconds: float) -> str:
    """The demo's last block: what was made and where, the figures, the served answer, next steps."""
    store = out.store
    quality = out.json(f"{out.run}/quality.json")
    lines = ["", "=" * 72, f"ils demo: done in {seconds:.0f} s. Everything is under {store.root_uri}", "made:",
             f"  synthetic phantom studies   {store.uri('phantoms')}",
             f"  generated pairs (ilsgen)    {store.uri(out.run)}",
             f"  model                       {store.uri(out.checkpoint)}",
             f"  evaluation reports          {store.uri(out.eval_out)}/report.json, {store.uri(out.truth_eval_out)}/report.json",
             "figures (synthetic phantoms; with real bases, the ground-truth rows are the procedural studies):"
             if out.json(f"{out.truth_real_eval_out}/report.json") else "figures (synthetic phantoms):"]
    if quality:
        lines.append(f"  ilsgen vs phantom truth     location accuracy {_pct(quality.get('location_accuracy')).strip()} %, "
                     f"mask IoU {_pct(quality['mask_iou'].get('mean')).strip()} %")
    lines += [f"  model, ilsgen test pairs    {_overall(out.json(f'{out.eval_out}/report.json'))}",
              f"  model, ground-truth pairs   {_overall(out.json(f'{out.truth_eval_out}/report.json'))}",
              ]
    comp = (out.json(f"{out.truth_eval_out}/report.json") or {}).get("comparison") or {}
    if comp.get("labels_vs_truth"):
        lines.append(_ceiling("  ilsgen labels, truth pairs  ", comp))
    real_truth = out.json(f"{out.truth_real_eval_out}/report.json")
    if real_truth:
        lines.append(f"  model, truth on real bases  {_overall(real_truth)}")
        rcomp = real_truth.get("comparison") or {}
        if rcomp.get("labels_vs_truth"):
            lines.append(_ceiling("  ilsgen labels, real bases   ", rcomp))
    model_real = model_lines(out.json(f"{out.real_model_out}/real_eval.json"))
    if model_real:
        lines.append("figures (real radiographs, development split; the model, 'Segment the opacity.' / 'Segment the consolidation.'):")
        lines += [f"  {line}" for line in model_real]
    real = real_lines(out.json(f"{out.real_eval_out}/real_eval.json"))
    if real:
        lines.append("figures (real radiographs, development split; anatomy + ilsgen lesion masks, not the model):")
        lines += [f"  {line}" for line in real]
    else:
        lines.append(f"  real radiographs, anatomy + ilsgen masks: none in this run ({out.notes.get('real-eval', 'real-eval skipped')})")
    if out.reply:
        lines.append(f"served answer: {out.reply.get('message')}  [asked: {out.reply.get('instruction')!r}; "
                     f"reply in {store.uri('demo/served.json')}]")
    cfg_arg = f" --config {config_path}" if config_path else ""
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    lines += [f"web page: run `ils serve{cfg_arg} serve.checkpoint={store.uri(out.checkpoint)} serve.port={cfg.serve.port}` and open "
              f"http://{host}:{cfg.serve.port}/",
              f"logs: {log_dir}/ (one file per stage: Ray, Ray Serve, trainer); Ray's session logs under {cfg.ray.local_state_dir}",
              "=" * 72]
    return "\n".join(lines)
