"""Start one supervised program of the native stack with its own environment, after removing
whatever the previous start of the same program left running.

    python -m chicago_crime.devtools.launch --name airflow-worker --env-file F --state DIR -- CMD...

supervisord restarts a program that died, but only its direct child was ever its business: when
a Celery worker is SIGKILLed, its children (``airflow serve-logs``, the pool processes and the
task that was running) are re-parented to PID 1 and keep ports, locks and lake writes going
next to the new worker. So every start is tagged: the launcher puts a fresh random token in the
environment (``CHICAGO_CRIME_LAUNCH=<name>:<token>``) and records it in ``DIR/<name>.launch``;
before the next start it ends (SIGTERM, then SIGKILL after ``--grace`` seconds) every process
whose environment still carries the recorded token, then ``exec``s the program.

Why a token in the environment and not the alternatives: ``PR_SET_PDEATHSIG`` only reaches the
direct child that sets it (it is reset on fork, so a grandchild such as the task process is not
covered, and we do not control how Airflow spawns); a process group or session can be left
(``setsid``) and its numeric id can be reused by an unrelated process after the leader died.
Every descendant inherits the environment, whatever it does with groups, and the token cannot
match a process of someone else. Processes of other users are never looked at.

The program's environment comes only from ``--env-file`` (a JSON object written by the stack,
mode 600, owned by the service user), so secrets never appear on a command line or in
supervisord's configuration, and each program gets only the names it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

TOKEN_VAR = "CHICAGO_CRIME_LAUNCH"


def tagged_processes(tag: str) -> list[object]:
    """Live processes (of this user, or any user as root) whose environment carries ``tag``."""
    import psutil

    found = []
    me, uid = os.getpid(), os.getuid()
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.pid == me or (uid != 0 and proc.info["uids"].real != uid):
                continue
            if proc.environ().get(TOKEN_VAR) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def end_processes(tag: str, grace: float = 10.0) -> list[int]:
    """SIGTERM every process tagged ``tag``, SIGKILL the ones alive after ``grace`` seconds."""
    import psutil

    procs = tagged_processes(tag)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def previous_tag(state: Path, name: str) -> str | None:
    path = state / f"{name}.launch"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def record_tag(state: Path, name: str) -> str:
    tag = f"{name}:{secrets.token_hex(8)}"
    path = state / f"{name}.launch"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tag)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return tag


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: launch --name NAME --env-file FILE --state DIR -- COMMAND...",
              file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="chicago_crime.devtools.launch")
    parser.add_argument("--name", required=True)
    parser.add_argument("--env-file", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--grace", type=float, default=10.0)
    opts = parser.parse_args(args[:split])
    command = args[split + 1:]
    if not command:
        parser.error("no command after --")

    env = {str(k): str(v) for k, v in json.loads(opts.env_file.read_text()).items()}
    tag = previous_tag(opts.state, opts.name)
    if tag:
        started = time.monotonic()
        ended = end_processes(tag, opts.grace)
        if ended:
            print(f"launch: ended {len(ended)} process(es) the previous {opts.name} left running "
                  f"(pids {', '.join(map(str, ended))}) in {time.monotonic() - started:.1f}s",
                  flush=True)
    env[TOKEN_VAR] = record_tag(opts.state, opts.name)
    os.execvpe(command[0], command, env)
    return 127  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
