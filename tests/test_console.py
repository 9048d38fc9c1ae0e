"""ils.console: a stage's output (ours, a child process's, Ray's) goes to its log file, the terminal
keeps one line per stage."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_stage_output_goes_to_log_files(tmp_path):
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys
        from ils.console import QuietConsole
        logging.basicConfig(level=logging.INFO)
        with QuietConsole({str(tmp_path / 'logs')!r}) as c:
            c.say("header for people")
            with c.stage("[1/2] noisy", "01-noisy"):
                print("print from the stage")
                logging.getLogger("x").info("a log line from the stage")
                subprocess.run(["sh", "-c", "echo from a child process; echo child stderr >&2"])
                os.write(2, b"raw fd 2 write\\n")
            c.say("summary of stage 1")
            try:
                with c.stage("[2/2] failing", "02-failing"):
                    raise RuntimeError("boom")
            except RuntimeError:
                c.say("stage 2 failed")
        print("after the console")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "header for people" and lines[-1] == "after the console"
    assert lines[1].startswith("[1/2] noisy") and " done in " in lines[1]
    assert lines[2] == "summary of stage 1"
    assert lines[3].startswith("[2/2] failing") and "FAILED" in lines[3] and lines[4] == "stage 2 failed"
    assert len(lines) == 6 and out.stderr == ""
    log = (tmp_path / "logs" / "01-noisy.log").read_text()
    for text in ("print from the stage", "a log line from the stage", "from a child process", "child stderr", "raw fd 2 write"):
        assert text in log
    assert (tmp_path / "logs" / "02-failing.log").exists()


def test_demo_eval_summary_shows_agreement_and_paraphrases():
    from ils.demo_summary import eval_lines

    blk = {"n": 4, "gated": {"gIoU": 0.5, "cIoU": 0.25, "N-Acc": 1.0}, "text_accuracy": 0.75}
    report = {"overall": blk, "per_type": {"basic": blk}, "answer_agreement": {"raw": 0.072, "decided": 1.0, "n": 4},
              "paraphrase": {"n": 3, "template": {"overall": blk}, "paraphrase": {"overall": dict(blk, text_accuracy=0.5)}}}
    lines = eval_lines(report)
    assert lines[1].split() == ["all", "4", "50.0", "25.0", "100.0", "75.0"]
    assert "raw generation 7.2 %, served answer 100.0 %" in lines[3]
    assert "same 3 pairs asked as paraphrases" in lines[4] and "text 75.0 -> 50.0" in lines[4]
    assert eval_lines(None) == ["(no report)"]


def test_demo_real_figures_prefer_held_out_images():
    """The demo's real-image lines use the images the shipped network never saw when there are any."""
    from ils.demo_summary import real_lines

    anat = lambda n, d: {"n": n, "lung_dice": {"mean": d, "min": d - 0.01, "n": n}}
    record = {"per_set": {
        "a": {"all": {"anatomy": anat(5, 0.97), "lesions": {"opacity": {"n": 4, "mean_iou": 0.5, "whole_lung_mean_iou": 0.3}}},
              "held_out": {"anatomy": anat(2, 0.95), "lesions": {"opacity": {"n": 2, "mean_iou": 0.45, "whole_lung_mean_iou": 0.31}}}},
        "b": {"all": {"anatomy": anat(3, 0.96)}, "held_out": {"anatomy": {"n": 0}}},
    }}
    a, b = real_lines(record)
    assert a.startswith("a [held out, 2 images]") and "0.950" in a and "opacity IoU 0.450 vs whole lung 0.310 (n=2)" in a
    assert b.startswith("b [all, incl. images the network was trained on, 3 images]") and "0.960" in b
    assert real_lines(None) == []
