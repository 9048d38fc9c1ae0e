"""`ils demo`: the embedded main job, end to end on one machine.

sample (synthetic phantom studies; with `--real` present, half of them on its real radiographs)
-> gen (Ray Data) -> export (MIMIC-ILS) -> gen-eval (quality
against the phantoms' ground truth) -> real-eval (anatomy and lesion masks on real radiographs with
expert masks, `--real`, when present) -> train (Ray Train, tiny model) -> eval (against ilsgen's
test pairs) -> truth-pairs + eval-truth (against pairs made from the phantoms' ground truth; with real bases,
the procedural studies here and those on real radiographs in truth-pairs-real + eval-truth-real) -> real-eval-model
(the trained model asked about the real radiographs, `ils real-eval --checkpoint --model-only`, when
present) -> serve one real request. Each step is the same subcommand a user would type, with the same
--config and overrides, so the demo is also a check that the README's commands work.

The terminal shows one progress bar per stage, each stage's summary and a final summary
(ils.demo_summary); everything else the stages print (our logs, Ray's and Ray Serve's, the
trainer's metrics) goes to one log file per stage under `<store>/logs/demo/` (ils.console).
`--verbose` prints it all on the terminal instead.
"""

from __future__ import annotations

import json
import logging
import os
import time

HELP = "run the embedded main job: sample -> gen -> export -> gen-eval -> train -> eval (ilsgen + truth pairs) -> serve a request"

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--skip", default="", help="comma-separated steps to skip (sample,gen,export,gen-eval,real-eval,train,eval,truth-pairs,eval-truth,truth-pairs-real,eval-truth-real,real-eval-model,serve)")
    parser.add_argument("--real", default="../shared/realcxr",
                        help="real radiographs with expert masks (realcxr layout) for the real-eval stage; skipped when absent")
    parser.add_argument("--no-real-base", action="store_true",
                        help="procedural phantoms only (by default, with --real present, half the studies are built on its "
                             "non-held-out radiographs: sample.real_base)")
    parser.add_argument("--verbose", action="store_true", help="print every log line on the terminal instead of the log files")


def _serve_one_request(cfg, checkpoint_uri: str) -> dict:
    """Start the service, send one phantom study with an instruction, stop the service."""
    import urllib.request
    import uuid

    from ils.store import Store
    from ils.templates import instruction as make_instruction
    from ilsgen.manifest import read_manifest
    from serve.app import start_service

    store = Store.from_config(cfg.store)
    manifest = read_manifest(store, "phantoms/manifest.parquet").to_pylist()
    truth = store.read_parquet("phantoms/truth/findings.parquet").to_pylist()
    present = [f for f in truth if f["present"] and f["locations"]]
    study = next((s for s in manifest if s["split"] == "test" and any(f["study_id"] == s["study_id"] for f in present)), manifest[0])
    finding = next((f for f in present if f["study_id"] == study["study_id"]), None)

    text = make_instruction("basic", finding["lesion"], finding["locations"]) if finding else "Segment the effusion in the left lung base."
    image = store.read_bytes(study["image_uri"])
    cfg.serve.checkpoint = checkpoint_uri
    handle = start_service(cfg)
    try:
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\n{text}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"study.dcm\"\r\n"
            "Content-Type: application/dicom\r\n\r\n"
        ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        keys = [k for k in (os.environ.get("ILS_API_KEYS") or "").split(",") if k]
        if keys:
            headers["Authorization"] = f"Bearer {keys[0]}"
        req = urllib.request.Request(f"{handle.url}/v1/segment", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback URL
            reply = json.loads(resp.read())
    finally:
        handle.stop()
    return {"study_id": study["study_id"], "instruction": text, "answer": reply.get("answer"), "message": reply.get("message"),
            "present": reply.get("present"), "confidence": reply.get("confidence"),
            "mask_pixels": _rle_area(reply.get("mask_rle")), "model_id": reply.get("model_id")}


def _real_base_tests(store) -> bool:
    """Whether the demo's sample has test-split studies built on real radiographs."""
    from ils.phantom.truth_pairs import study_sources
    from ilsgen.manifest import read_manifest

    sources = study_sources(store.child("phantoms"))
    return any(sources.get(s["study_id"]) == "real_base" and s.get("split") == "test"
               for s in read_manifest(store, "phantoms/manifest.parquet").to_pylist())


def _rle_area(rle) -> int | None:
    if not isinstance(rle, dict) or "counts" not in rle:
        return None
    return int(sum(rle["counts"][1::2]))


def run(args, cfg) -> int:
    from ils.cli import main as ils_main
    from ils.console import QuietConsole, tail
    from ils.demo_summary import Outputs, final_summary, stage_summary
    from ils.store import Store

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    common = ["--config", args.config, *args.overrides]
    started = time.time()
    store = Store.from_config(cfg.store)
    run_uri, ckpt, eval_out = cfg.gen.out, cfg.train.out, cfg.eval.out
    outputs = Outputs(store=store, run=run_uri, checkpoint=ckpt, eval_out=eval_out, truth_eval_out=f"{eval_out}-truth",
                      truth_real_eval_out=f"{eval_out}-truth-real")
    log_dir = os.path.join(store.root, "logs", "demo") if not store.is_s3 else os.path.join(cfg.ray.local_state_dir, "logs", "demo")
    real = os.path.isfile(os.path.join(args.real, "index.csv"))
    # With real radiographs: half the studies are built on them (sample.real_base, docs/real_base.md);
    # they train on ilsgen's labels like every other study (docs/training.md says why not their truth).
    on_real = real and cfg.sample.real_base is None and not args.no_real_base
    sample_real = [f"sample.real_base={os.path.abspath(args.real)}"] if on_real else []
    # Truth pairs per source: the procedural ones stay the yardstick of earlier rounds.
    configured = cfg.sample.real_base is not None and os.path.isfile(os.path.join(cfg.sample.real_base, "index.csv"))
    two_sources = on_real or configured
    procedural = ["--source", "procedural"] if two_sources else []
    steps = [
        ("sample", ["sample", "--out", "phantoms", *sample_real]),
        ("gen", ["gen", "--input", "phantoms/manifest.parquet", "--out", run_uri]),
        ("export", ["export", "--run", run_uri]),
        ("gen-eval", ["gen-eval", "--run", run_uri, "--truth", "phantoms/truth"]),
        ("real-eval", ["real-eval", "--data", args.real, "--out", store.uri(outputs.real_eval_out)]),
        ("train", ["train", "--data", run_uri, "--out", ckpt]),
        ("eval", ["eval", "--checkpoint", ckpt, "--data", run_uri, "--out", eval_out]),
        ("truth-pairs", ["truth-pairs", "--phantoms", "phantoms", "--out", "truth-test", "--split", "test", *procedural]),
        ("eval-truth", ["eval", "--checkpoint", ckpt, "--data", "truth-test", "--out", outputs.truth_eval_out, "--split", "test",
                        "--label-ceiling", run_uri]),
        ("truth-pairs-real", ["truth-pairs", "--phantoms", "phantoms", "--out", "truth-test-real", "--split", "test", "--source", "real_base"]),
        ("eval-truth-real", ["eval", "--checkpoint", ckpt, "--data", "truth-test-real", "--out", outputs.truth_real_eval_out,
                             "--split", "test", "--label-ceiling", run_uri]),
        ("real-eval-model", ["real-eval", "--data", args.real, "--out", store.uri(outputs.real_model_out), "--checkpoint", ckpt,
                             "--model-only"]),
    ]
    if not two_sources:
        skip.update({"truth-pairs-real", "eval-truth-real"})
    if not real:
        skip.update({"real-eval", "real-eval-model"})
        outputs.notes["real-eval"] = f"no real radiographs at {args.real!r} (--real DIR)"
    todo = [s for s in steps if s[0] not in skip] + ([("serve", None)] if "serve" not in skip else [])
    with QuietConsole(log_dir, enabled=not args.verbose) as console:
        data = "synthetic studies (half of them lesions drawn on real radiographs)" if on_real else "synthetic phantom data"
        console.say(f"ils demo: {len(todo)} stages on {data}"
                    + (" (+ real radiographs for real-eval)" if "real-eval" not in skip else "") + f"; details in {log_dir}/<stage>.log")
        real_tests = "truth-pairs-real" in skip  # only eval-truth-real asked for: its pairs are there already
        for k, (name, argv) in enumerate(todo, 1):
            label = f"[{k}/{len(todo)}] {name}"
            if name == "truth-pairs-real":  # after sample: a tiny sample may have no such study
                real_tests = _real_base_tests(store)
            if name in ("truth-pairs-real", "eval-truth-real") and not real_tests:
                console.say(f"{label:<24} skipped: no test-split study was built on a real radiograph")
                continue
            code = 1
            try:
                with console.stage(label, f"{k:02d}-{name}") as log_path:
                    if argv is None:
                        outputs.reply = _serve_one_request(cfg, store.uri(ckpt))
                        store.write_text("demo/served.json", json.dumps(outputs.reply, indent=2))
                        code = 0
                    else:
                        code = ils_main([*argv[:1], *common, *argv[1:]])
                    if code:
                        raise RuntimeError(f"exit status {code}")
            except Exception as exc:
                console.say(f"ils demo: stage {name!r} failed ({exc}); the end of {log_path}:\n{tail(log_path)}")
                return code or 1
            for line in stage_summary(name, outputs):
                console.say(f"    {line}")
        console.say(final_summary(outputs, cfg, args.config, log_dir, time.time() - started))
    return 0
