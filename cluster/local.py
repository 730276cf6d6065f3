"""The local Ray head that ``make up`` / ``baton up`` starts: start, stop and probe it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

DASHBOARD_URL = "http://127.0.0.1:8265"
# What a job's working directory (the repository) leaves behind when it is uploaded.
JOB_EXCLUDES = [".venv", ".baton", ".baton-test", ".git", "__pycache__", "*.pt", "*.safetensors"]


def run_job(entrypoint: str, env_vars: dict[str, str], follow: bool) -> None:
    """Submit ``entrypoint`` as a Ray job of the running cluster, with the repository as its
    working directory; with ``follow``, stream its logs and fail unless it succeeds."""
    import asyncio
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    from cluster.errors import BatonError

    client = JobSubmissionClient(DASHBOARD_URL)
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": ".", "excludes": JOB_EXCLUDES, "env_vars": env_vars})
    print(f"submitted {job} to {DASHBOARD_URL} (follow: ray job logs -f {job})", file=sys.stderr)
    if not follow:
        return

    async def stream() -> None:
        async for lines in client.tail_job_logs(job):
            print(lines, end="", flush=True)

    asyncio.run(stream())
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
    if status != JobStatus.SUCCEEDED:
        raise BatonError(f"job {job} ended {status.value}")


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def dashboard_up(url: str = DASHBOARD_URL) -> bool:
    try:
        # 401 counts: a head with token auth answers, it just wants the token.
        return httpx.get(f"{url}/api/version", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def start_head(env: dict[str, str], num_cpus: int | None = None) -> None:
    """Start a Ray head with the dashboard on 127.0.0.1:8265; workers inherit ``env``."""
    command = [ray_cli(), "start", "--head", "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--disable-usage-stats"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    # Jobs run `python -m ...`: put this environment's interpreter first on the head's PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, **env, "PATH": path}
    # Token auth (RAY_AUTH_MODE=token) needs ~/.ray/auth_token; make one on first use.
    subprocess.run([ray_cli(), "get-auth-token", "--generate"], env=full_env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(command, env=full_env, check=True, stdout=subprocess.DEVNULL)


def stop_head() -> None:
    subprocess.run([ray_cli(), "stop", "--force"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
