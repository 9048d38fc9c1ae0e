"""The one place that keeps Ray, torch and friends on loopback, and starts or joins Ray.

`loopback_env()` holds the settings of RUNTIME.md; `apply_loopback_env()` puts them into this
process (child processes inherit them); `init_ray(cfg)` applies them and starts a local
loopback-only Ray, or joins a cluster when `ray.address` is set. Tests, CI, the demo and every
CLI subcommand go through here; the Makefile exports the same values from `ils env`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ils.config import Config

log = logging.getLogger(__name__)

BOOTSTRAP = "provider: {type: local}\n"


def _state_dir(local_state_dir: str | None = None) -> Path:
    base = Path(local_state_dir or os.environ.get("ILS_STATE_DIR") or Path(tempfile.gettempdir()) / "ils-state")
    return base.expanduser().resolve()


def loopback_env(local_state_dir: str | None = None) -> dict[str, str]:
    """Environment that stops Ray, torch, Hugging Face, ultralytics and AWS from leaving the machine."""
    state = _state_dir(local_state_dir)
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
        # Ray's dashboard probes the cloud metadata address unless this file says "local".
        "ILS_RAY_HOME": str(state / "home"),
        "GLOO_SOCKET_IFNAME": "lo",
        "TP_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(state / "ultralytics"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "TORCH_EXTENSIONS_DIR": str(state / "torch_extensions"),
        "MPLBACKEND": "Agg",
        # matplotlib's font cache: runtime state, not under a HOME that may be read-only.
        "MPLCONFIGDIR": str(state / "matplotlib"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def apply_loopback_env(local_state_dir: str | None = None, *, set_home: bool = True) -> dict[str, str]:
    """Set the loopback settings in this process; returns them.

    With `set_home`, HOME points at a folder holding `ray_bootstrap_config.yaml` with a local
    provider, so that Ray's dashboard process does not probe 169.254.169.254. Values the user
    already exported win, except HOME, which a local Ray always needs to be this folder.
    """
    env = loopback_env(local_state_dir)
    home = Path(env["ILS_RAY_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP)
    Path(env["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if set_home:
        os.environ.setdefault("ILS_REAL_HOME", os.environ.get("HOME", ""))
        os.environ["HOME"] = str(home)
    return env


def init_ray(cfg: "Config | None" = None, **kwargs):
    """Start a local loopback-only Ray (cfg.ray.address is None) or join a cluster."""
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.ray.address if cfg else None
    apply_loopback_env(cfg.ray.local_state_dir if cfg else None, set_home=address is None)
    opts: dict = dict(include_dashboard=False, log_to_driver=True, namespace=cfg.ray.namespace if cfg else "ils")
    if address is None:
        opts["_node_ip_address"] = "127.0.0.1"
        # No dashboard, so no state API: quiet the one Ray Train helper that polls it every second.
        opts["runtime_env"] = {"worker_process_setup_hook": "ils.runtime.quiet_state_api_pollers"}
        if cfg and cfg.ray.num_cpus:
            opts["num_cpus"] = cfg.ray.num_cpus
        if cfg and cfg.ray.object_store_memory_mb:
            opts["object_store_memory"] = cfg.ray.object_store_memory_mb * 1024 * 1024
    else:
        opts["address"] = address
    opts.update(kwargs)
    log.info("starting Ray (%s)", "local, loopback only" if address is None else address)
    ray.init(**opts)
    return ray


#: Loggers of Ray helpers that poll the state API (served by the dashboard) and warn each time
#: it is missing. Ray Train V2's PlacementGroupCleaner asks once a second whether the train
#: controller is alive, to remove its placement group if the controller dies ungracefully; a
#: local Ray started here has no dashboard, so that check cannot run (a graceful end still
#: removes the placement group), and its warning would fill the log (~1,000 lines per demo run).
STATE_API_POLLERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_state_api_pollers() -> None:
    """Ray `worker_process_setup_hook` of the local Ray: STATE_API_POLLERS log errors only."""
    for name in STATE_API_POLLERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def setup_logging(level: str | int = "INFO") -> None:
    """Plain timestamped logging for the CLI; libraries log through `logging.getLogger`."""
    logging.basicConfig(
        level=level if isinstance(level, int) else getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
