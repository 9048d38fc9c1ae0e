"""`ils gen` progress people can follow: one bar per stage, Ray's own progress and warnings to log files.

Every step calls `tick(stage, n)` after a batch (ilsgen.steps). In the plain loop the bars are
updated directly; on Ray, steps send their counts to a small counter actor named after the Ray
job (`ils-gen-progress-<job id>`, no CPU reserved) and a driver thread moves the bars twice a
second. `quiet_ray_data()` turns off Ray Data's progress bars and execution banners and keeps
its console handler at errors (its log file, ray-data.log in the session folder, keeps every
record); run_ray starts Ray with `log_to_driver=False`, so core-worker warnings stay in the
session's worker log files.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("report", "decode", "anatomy", "anomaly", "detect", "fuse", "write")
_local: Callable[[str, int], None] | None = None
_actor: Any = None
_actor_looked_up = False


def _name() -> str:
    import ray

    return f"ils-gen-progress-{ray.get_runtime_context().get_job_id()}"


def tick(stage: str, n: int) -> Any:
    """Count n studies through `stage` (never raises: progress is not worth a failed study).
    On Ray it returns the counter call's ObjectRef (nobody needs to wait for it), else None."""
    global _actor, _actor_looked_up
    if _local is not None:
        _local(stage, n)
        return
    try:
        if not _actor_looked_up:
            _actor_looked_up = True
            import ray

            if ray.is_initialized():
                _actor = ray.get_actor(_name())
        if _actor is not None:
            return _actor.add.remote(stage, n)
    except Exception:  # noqa: BLE001 - no counter (a plain call outside a run): nothing to show
        _actor = None
    return None


class _Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, stage: str, n: int) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + n

    def reset(self) -> None:
        self.counts = {}

    def get(self) -> dict[str, int]:
        return dict(self.counts)


class StageBars:
    """One tqdm bar per stage over `total` studies; `with StageBars(total, ray=True): ...`."""

    def __init__(self, total: int, stages: tuple[str, ...] = STAGES, ray: bool = False):
        self.total, self.stages, self.ray = total, stages, ray
        self.bars: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter: Any = None

    def __enter__(self) -> "StageBars":
        global _local
        from tqdm import tqdm

        width = max(len(s) for s in self.stages)
        self.bars = {s: tqdm(total=self.total, desc=s.ljust(width), unit="study", position=i, leave=True, dynamic_ncols=True)
                     for i, s in enumerate(self.stages)}
        if self.ray:
            import ray

            self._counter = ray.remote(num_cpus=0)(_Counter).options(name=_name(), get_if_exists=True).remote()
            ray.get(self._counter.reset.remote())
            self._thread = threading.Thread(target=self._poll, name="gen-progress", daemon=True)
            self._thread.start()
        else:
            _local = self.update
        return self

    def update(self, stage: str, n: int) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(min(n, bar.total - bar.n))

    def _set(self, counts: dict[str, int]) -> None:
        for stage, n in counts.items():
            bar = self.bars.get(stage)
            if bar is not None and n > bar.n:
                bar.update(min(n, bar.total) - bar.n)

    def _poll(self) -> None:
        import ray

        while not self._stop.wait(0.5):
            try:
                self._set(ray.get(self._counter.get.remote(), timeout=5))
            except Exception as exc:  # noqa: BLE001 - the bars only
                log.debug("progress poll: %s", exc)

    def __exit__(self, *exc: Any) -> None:
        global _local
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                import ray

                self._set(ray.get(self._counter.get.remote(), timeout=5))
            except Exception:  # noqa: BLE001
                pass
        _local = None
        for bar in self.bars.values():
            bar.close()


def quiet_ray_data(ctx: Any) -> None:
    """Ray Data: no progress bars or banners on the terminal; its records go to its log file."""
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if not hasattr(handler, "baseFilename") and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)
