"""`ils submit`: run an `ils` job on a Ray cluster through the Ray Jobs API, shipping the config."""

from __future__ import annotations

HELP = "submit gen|train|eval (or sample, export) to a Ray cluster via the Jobs API"
DESCRIPTION = (
    "Load and validate the config locally (--config + key=value overrides), ship the merged config "
    "as the job's runtime_env working_dir, and run `ils JOB --config ils-config.yaml ARGS` on the "
    "cluster (ray.address=auto unless set). The cluster image must have `ils` installed. Token auth: "
    "--token-file, else RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."
)


def add_arguments(parser) -> None:
    from ils.jobs import SUBMITTABLE

    parser.add_argument("job", choices=SUBMITTABLE, help="the ils subcommand to run on the cluster")
    parser.add_argument("--address", help="Ray Jobs API, e.g. http://HEAD:8265 (default: $ILS_JOBS_ADDRESS)")
    parser.add_argument("--args", dest="job_args", default="", help="arguments for the job, one shell-quoted string, e.g. \"--limit 100\"")
    parser.add_argument("--token-file", help="file holding the Ray auth token (token mode)")
    parser.add_argument("--submission-id", help="job id to use (default: Ray assigns one)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra runtime_env env var (never credentials)")
    parser.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it SUCCEEDED")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait (default 3600)")


def run(args, cfg) -> int:
    import shlex

    from ils import jobs
    from ils.errors import UserError

    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--env {item!r} is not NAME=VALUE")
        env[name] = value
    spec = jobs.build_job(args.job, cfg, shlex.split(args.job_args), env_vars=env or None)
    jsc = jobs.client(args.address, jobs.read_token(args.token_file))
    job_id = jobs.submit(jsc, spec, args.submission_id)
    print(job_id)
    if not args.wait:
        return 0
    state = jobs.wait(jsc, job_id, timeout_s=args.timeout)
    print(f"{job_id}: {state}")
    return 0 if state == "SUCCEEDED" else 1
