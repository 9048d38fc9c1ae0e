"""Which Ray Train run an `ils train` belongs to, and whether it starts over or resumes.

A run is keyed by where its model goes: without `train.name`, the run is named after the
resolved `--out` URI (`<last folder>-<8 hex of its SHA-1>`; the data URI when there is no
`--out`), so two trainings in one store with different outputs never share checkpoints.
`train.resume` says what to do with a run that already has checkpoints:

- `auto`   resume it (a killed run continues), start a new one otherwise;
- `fresh`  delete its checkpoints and start over;
- `require` resume it, and fail when there is nothing to resume.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Optional

from ils.errors import UserError

RESUME_MODES = ("auto", "fresh", "require")


@dataclass(frozen=True)
class RunPlan:
    name: str  # Ray Train run name under the storage folder
    folder: str  # its folder (URI) in the store
    latest_step: Optional[int]  # the newest checkpoint's step, None when there is none
    action: str  # "start" | "resume" | "restart"

    def describe(self) -> str:
        if self.action == "resume":
            return f"resuming run {self.name!r} from its checkpoint at step {self.latest_step} ({self.folder})"
        if self.action == "restart":
            return f"starting run {self.name!r} over: deleted its checkpoints up to step {self.latest_step} ({self.folder})"
        return f"starting a new run {self.name!r} ({self.folder})"


def run_name(explicit: Optional[str], out_uri: Optional[str], data_uri: str) -> str:
    """`explicit` if given, else a name derived from the output (or, without one, the data)."""
    if explicit:
        return explicit
    key = (out_uri or data_uri).rstrip("/")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", posixpath.basename(key) or "run").strip("-.") or "run"
    return f"{stem[:40]}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"


def latest_checkpoint_step(store, run_rel: str) -> Optional[int]:
    """The highest `checkpoint_<step>` folder of a run that holds a trainable state, if any."""
    steps = []
    for rel in store.list(run_rel, suffix="trainable.pt"):
        m = re.search(r"checkpoint_(\d+)/", rel)
        if m:
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def plan_run(store, name: str, resume: str) -> RunPlan:
    """Decide start / resume / restart for run `name` in `store` (the runs' storage folder).

    `fresh` deletes the run's folder here, before Ray Train opens it.
    """
    if resume not in RESUME_MODES:
        raise UserError(f"train.resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    latest = latest_checkpoint_step(store, name)
    folder = store.uri(name)
    if resume == "require" and latest is None:
        raise UserError(f"train.resume=require, but run {name!r} has no checkpoint to resume at {folder}")
    if resume == "fresh" and store.exists(name):
        store.delete(name)
        return RunPlan(name, folder, latest, "restart")
    if latest is not None:
        return RunPlan(name, folder, latest, "resume")
    return RunPlan(name, folder, None, "start")
