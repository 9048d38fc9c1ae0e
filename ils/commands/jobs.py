"""`ils jobs status|logs|stop ID`: follow or stop a job submitted with `ils submit`."""

from __future__ import annotations

HELP = "status, logs or stop of a Ray job (Jobs API)"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("status", "logs", "stop", "wait"), help="what to do")
    parser.add_argument("job_id", help="the submission id printed by `ils submit`")
    parser.add_argument("--address", help="Ray Jobs API, e.g. http://HEAD:8265 (default: $ILS_JOBS_ADDRESS)")
    parser.add_argument("--token-file", help="file holding the Ray auth token (token mode)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for `wait` (default 3600)")


def run(args, cfg) -> int:
    from ils import jobs

    jsc = jobs.client(args.address, jobs.read_token(args.token_file))
    if args.action == "status":
        print(jobs.status(jsc, args.job_id))
    elif args.action == "logs":
        print(jobs.logs(jsc, args.job_id), end="")
    elif args.action == "stop":
        print("stop requested" if jobs.stop(jsc, args.job_id) else "job already ended")
    else:
        state = jobs.wait(jsc, args.job_id, timeout_s=args.timeout)
        print(state)
        return 0 if state == "SUCCEEDED" else 1
    return 0
