"""Ray Jobs SDK helpers: submit an `ils` job to a running cluster, follow it, stop it.

A job ships its configuration with it: the merged config (file + overrides) is written as
`ils-config.yaml` into a fresh folder that becomes the job's `runtime_env.working_dir`, and the
entrypoint is `ils <job> --config ils-config.yaml [args]`. The cluster image must have the
`ils` package installed (see the repository's Dockerfile); only the config travels.

Token authentication (Ray's token mode, on by default for recent local clusters): the token is
read from `--token-file`, else `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`,
else `~/.ray/auth_token`, and sent as `Authorization: Bearer <token>` on every Jobs API call.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from ils.errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from ils.config import Config

log = logging.getLogger(__name__)

#: `ils` subcommands that may run as cluster jobs.
SUBMITTABLE: tuple[str, ...] = ("sample", "gen", "export", "train", "eval")
#: Name of the shipped config inside the job's working_dir.
SHIPPED_CONFIG = "ils-config.yaml"
#: Environment variable that names the Jobs API address when --address is not given.
ADDRESS_ENV = "ILS_JOBS_ADDRESS"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(UserError):
    """A Jobs API call failed or a job did not end as expected."""


def read_token(token_file: str | None = None) -> Optional[str]:
    """The Ray auth token from a file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise UserError(f"token file not found: {path}")
        return path.read_text().strip() or None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    candidates = [os.environ.get("RAY_AUTH_TOKEN_PATH")]
    for home in (os.environ.get("ILS_REAL_HOME"), os.environ.get("HOME")):
        if home:
            candidates.append(str(Path(home) / ".ray" / "auth_token"))
    for cand in candidates:
        if cand and Path(cand).expanduser().is_file():
            token = Path(cand).expanduser().read_text().strip()
            if token:
                return token
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    """HTTP headers for Ray's token mode (empty when there is no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def resolve_address(address: str | None) -> str:
    """The Jobs API address: --address, else $ILS_JOBS_ADDRESS, else $RAY_API_SERVER_ADDRESS."""
    addr = address or os.environ.get(ADDRESS_ENV) or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not addr:
        raise UserError(f"no Jobs API address: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    if "://" not in addr:
        addr = f"http://{addr}"
    return addr


def client(address: str | None, token: str | None = None) -> "JobSubmissionClient":
    """A JobSubmissionClient for the dashboard at `address`, authenticated when a token is known."""
    from ray.job_submission import JobSubmissionClient

    addr = resolve_address(address)
    try:
        return JobSubmissionClient(addr, headers=auth_headers(token))
    except Exception as exc:  # connection refused, 401/403, version mismatch ...
        raise JobError(f"cannot reach the Ray Jobs API at {addr}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


@dataclass
class JobSpec:
    """Everything one submission sends: entrypoint, runtime_env and metadata."""

    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: Optional[float] = None
    entrypoint_resources: Optional[dict[str, float]] = None


def entrypoint_for(job: str, job_args: Sequence[str] = (), config_name: str = SHIPPED_CONFIG) -> str:
    """`ils <job> --config <shipped> [args]` as one shell-quoted command line."""
    if job not in SUBMITTABLE:
        raise UserError(f"cannot submit '{job}': choose one of {', '.join(SUBMITTABLE)}")
    return shlex.join(["ils", job, "--config", config_name, *job_args])


def build_job(
    job: str,
    cfg: "Config",
    job_args: Sequence[str] = (),
    *,
    env_vars: dict[str, str] | None = None,
    workdir: str | Path | None = None,
    pip: Iterable[str] = (),
) -> JobSpec:
    """A JobSpec that ships `cfg` (with ray.address=auto unless set) as the job's working_dir."""
    from dataclasses import replace

    from ils.config import to_yaml

    if not cfg.ray.address:
        cfg = replace(cfg, ray=replace(cfg.ray, address="auto"))  # the driver joins the cluster
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ils-job-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHIPPED_CONFIG).write_text(to_yaml(cfg))
    runtime_env: dict = {"working_dir": str(folder)}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    if pip:
        runtime_env["pip"] = list(pip)
    return JobSpec(
        entrypoint=entrypoint_for(job, job_args),
        runtime_env=runtime_env,
        metadata={"ils_job": job, "store": cfg.store.uri},
    )


def submit(jsc: "JobSubmissionClient", spec: JobSpec, submission_id: str | None = None) -> str:
    """Submit a JobSpec; returns the submission id."""
    try:
        return jsc.submit_job(
            entrypoint=spec.entrypoint,
            runtime_env=spec.runtime_env,
            metadata=spec.metadata,
            submission_id=submission_id,
            entrypoint_num_cpus=spec.entrypoint_num_cpus,
            entrypoint_resources=spec.entrypoint_resources,
        )
    except Exception as exc:
        raise JobError(f"submission failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


def status(jsc: "JobSubmissionClient", job_id: str) -> str:
    """The job's status as a string (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    try:
        return str(jsc.get_job_status(job_id).value)
    except Exception as exc:
        raise JobError(f"no status for job {job_id}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


def wait(jsc: "JobSubmissionClient", job_id: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> str:
    """Poll until the job reaches a terminal status; returns it (JobError on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(jsc, job_id)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {state} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def logs(jsc: "JobSubmissionClient", job_id: str) -> str:
    try:
        return jsc.get_job_logs(job_id)
    except Exception as exc:
        raise JobError(f"no logs for job {job_id}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


def stop(jsc: "JobSubmissionClient", job_id: str) -> bool:
    try:
        return bool(jsc.stop_job(job_id))
    except Exception as exc:
        raise JobError(f"cannot stop job {job_id}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
