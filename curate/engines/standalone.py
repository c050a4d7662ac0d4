"""A Spark standalone cluster on this machine, from the scripts the pyspark package ships.

`start(state_dir, workers=2)` starts a master and `workers` workers on 127.0.0.1 as daemons
(``sbin/spark-daemon.sh`` running ``org.apache.spark.deploy.master.Master`` and
``...worker.Worker`` through ``bin/spark-class``, as Spark's own start-master.sh and
start-worker.sh do), waits until every worker has registered and returns the `Cluster`: the
master URL for ``spark-submit --master`` or ``curate run --engine spark --master``, and the
daemons' logs, pid files and work directories under `state_dir`. `stop(state_dir)` stops what
`start` started there. Nothing outside `state_dir` is written.

Decisions: ports default to Spark's (7077, web UI 8080); port 0 lets Spark pick free ones, and
the master's URL is then read from its log line ``Starting Spark master at spark://...``. Every
daemon binds 127.0.0.1 (SPARK_LOCAL_IP), so nothing listens beyond loopback. A worker's memory
defaults to the machine's memory less 2 GB for the driver, split between the workers.

`python -m curate.engines.standalone start|stop|status --dir DIR` is what `make spark-cluster`
and `make spark-cluster-stop` run; `DIR/master` holds the master URL while the cluster runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from curate.errors import CurateError

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
STATE_FILE = "cluster.json"
MASTER_LINE = re.compile(r"Starting Spark master at (spark://\S+)")
REGISTERED_LINE = re.compile(r"Registering worker (\S+)")


class ClusterError(CurateError):
    """A standalone daemon did not start, register or stop."""


@dataclass(frozen=True)
class Cluster:
    master_url: str
    state_dir: str
    workers: int
    cores_per_worker: int
    memory_per_worker: str

    @property
    def log_dir(self) -> Path:
        return Path(self.state_dir) / "logs"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def daemon_env(state_dir: Path) -> dict[str, str]:
    """The environment spark-daemon.sh reads: where its pids, logs and worker dirs go."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST,
            "SPARK_LOG_DIR": str(state_dir / "logs"), "SPARK_PID_DIR": str(state_dir / "pids"),
            "SPARK_IDENT_STRING": "curate"}


def _daemon(state_dir: Path, action: str, cls: str, instance: int, *args: str) -> None:
    script = spark_home() / "sbin" / "spark-daemon.sh"
    result = subprocess.run(["bash", str(script), action, cls, str(instance), *args], env=daemon_env(state_dir),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"spark-daemon.sh {action} {cls.rsplit('.', 1)[-1]} {instance} failed "
                           f"(exit {result.returncode}): {(result.stdout + result.stderr).strip()[-2000:]}")


def _log(state_dir: Path, cls: str, instance: int) -> Path | None:
    logs = sorted((state_dir / "logs").glob(f"spark-curate-{cls}-{instance}-*.out"))
    return logs[-1] if logs else None


def _wait_for(state_dir: Path, cls: str, pattern: re.Pattern, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        path = _log(state_dir, cls, 1)
        found = pattern.findall(path.read_text(errors="replace")) if path and path.exists() else []
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            tail = path.read_text(errors="replace")[-2000:] if path and path.exists() else "(no log yet)"
            raise ClusterError(f"standalone cluster in {state_dir}: waited {timeout:.0f} s for "
                               f"{count} x {pattern.pattern!r} in the master log; its end:\n{tail}")
        time.sleep(0.25)


def default_worker_memory(workers: int) -> str:
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"{max(512, (total_mb - 2048) // max(1, workers))}m"


def start(state_dir: Path, workers: int = 2, cores_per_worker: int = 1, memory_per_worker: str | None = None,
          port: int = 7077, webui_port: int = 8080, timeout: float = 90.0) -> Cluster:
    """Start a master and `workers` workers on 127.0.0.1; return once all have registered."""
    state_dir = Path(state_dir).resolve()
    if (state_dir / STATE_FILE).exists():
        raise ClusterError(f"a cluster is already recorded in {state_dir / STATE_FILE}; "
                           f"stop it first (python -m curate.engines.standalone stop --dir {state_dir})")
    if workers < 1 or cores_per_worker < 1:
        raise ClusterError(f"need at least one worker with one core (got {workers} x {cores_per_worker})")
    memory = memory_per_worker or default_worker_memory(workers)
    (state_dir / "work").mkdir(parents=True, exist_ok=True)
    _daemon(state_dir, "start", MASTER_CLASS, 1, "--host", HOST, "--port", str(port),
            "--webui-port", str(webui_port))
    try:
        master_url = _wait_for(state_dir, MASTER_CLASS, MASTER_LINE, 1, timeout)[0]
        for instance in range(1, workers + 1):
            _daemon(state_dir, "start", WORKER_CLASS, instance, master_url, "--host", HOST, "--port", "0",
                    "--webui-port", "0", "--cores", str(cores_per_worker), "--memory", memory,
                    "--work-dir", str(state_dir / "work" / f"worker-{instance}"))
        _wait_for(state_dir, MASTER_CLASS, REGISTERED_LINE, workers, timeout)
    except BaseException:
        _stop_daemons(state_dir, workers)
        raise
    cluster = Cluster(master_url, str(state_dir), workers, cores_per_worker, memory)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=1) + "\n")
    (state_dir / "master").write_text(master_url + "\n")  # for `make spark-run` and shell scripts
    return cluster


def load(state_dir: Path) -> Cluster | None:
    path = Path(state_dir).resolve() / STATE_FILE
    return Cluster(**json.loads(path.read_text())) if path.exists() else None


def worker_pid(state_dir: Path, instance: int) -> int | None:
    path = Path(state_dir).resolve() / "pids" / f"spark-curate-{WORKER_CLASS}-{instance}.pid"
    return int(path.read_text()) if path.exists() else None


def _stop_daemons(state_dir: Path, workers: int) -> None:
    for instance in range(1, workers + 1):
        _daemon(state_dir, "stop", WORKER_CLASS, instance)
    _daemon(state_dir, "stop", MASTER_CLASS, 1)


def stop(state_dir: Path) -> bool:
    """Stop the cluster recorded in `state_dir` (False when none is); logs are kept."""
    state_dir = Path(state_dir).resolve()
    cluster = load(state_dir)
    if cluster is None:
        return False
    _stop_daemons(state_dir, cluster.workers)  # a worker stops its executors
    (state_dir / STATE_FILE).unlink()
    (state_dir / "master").unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curate.engines.standalone",
                                     description="Start or stop a Spark standalone cluster on 127.0.0.1.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=Path("build/spark-cluster"),
                        help="state directory: logs, pid files, worker dirs (default build/spark-cluster)")
    parser.add_argument("--workers", type=int, default=2, help="worker daemons (default 2)")
    parser.add_argument("--cores", type=int, default=1, help="cores per worker (default 1)")
    parser.add_argument("--memory", default=None, help="memory per worker, e.g. 4g (default: RAM - 2 GB, split)")
    parser.add_argument("--port", type=int, default=7077, help="master port (default 7077; 0 = any free)")
    parser.add_argument("--webui-port", type=int, default=8080, help="master web UI port (default 8080)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            cluster = start(args.dir, args.workers, args.cores, args.memory, args.port, args.webui_port)
            print(f"{cluster.master_url}  ({cluster.workers} workers x {cluster.cores_per_worker} cores, "
                  f"{cluster.memory_per_worker} each; logs in {cluster.log_dir})")
        elif args.action == "stop":
            print("stopped" if stop(args.dir) else f"no cluster recorded in {args.dir}")
        else:
            cluster = load(args.dir)
            print(cluster.master_url if cluster else f"no cluster recorded in {args.dir}")
            return 0 if cluster else 1
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
