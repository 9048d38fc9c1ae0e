"""ils gen progress: one bar per stage, fed directly (plain loop) or through a counter actor (Ray)."""

from __future__ import annotations

from ilsgen.progress import StageBars, tick


def test_bars_in_process():
    with StageBars(5, ("decode", "report")) as bars:
        tick("decode", 3)
        tick("report", 5)
        tick("decode", 9)  # never past the total
        tick("unknown", 1)
    assert bars.bars["decode"].n == 5 and bars.bars["report"].n == 5
    tick("decode", 1)  # outside a run: no bar, no error


def test_bars_fed_by_ray_workers(ray_local):
    import ray

    @ray.remote(num_cpus=0.1)
    def work(stage: str, n: int) -> None:
        from ilsgen import progress

        ray.get(progress.tick(stage, n))  # counted before the task returns

    with StageBars(10, ("anatomy", "fuse"), ray=True) as bars:
        ray.get([work.remote("anatomy", 4), work.remote("anatomy", 6), work.remote("fuse", 2)])
    assert bars.bars["anatomy"].n == 10 and bars.bars["fuse"].n == 2
