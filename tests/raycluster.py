"""A real two-node Ray cluster on this machine, for the cluster reindex's tests and benchmark.

``ray start --head`` plus a second ``ray start --address=...``, each with its own CPU count and its own
ports, picked in one go (separate free-port look-ups collide). Both run with ``--block`` under our own
process group, and are stopped by their process ids, never with ``ray stop`` (which ends every cluster on
the machine). Token authentication uses a token of the cluster's own (``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` for every node and every driver): Ray 2.60 turns it on by default where a
``~/.ray/auth_token`` exists, and a node without the head's token cannot join.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")

# `ray start`, with the wait for the node's registration in the GCS stretched from Ray's fixed 30 s to
# REGISTRATION_WAIT_S: on a machine shared by several busy test runs a node misses 30 s often (its raylet is
# up; the GCS answers late) and `ray start` gives up. The patched call is the one `ray start` polls.
REGISTRATION_WAIT_S = 240
_RAY_START = f"""
import sys, time
import ray._private.services as services
_get_node = services.get_node
def get_node(*args, **kwargs):
    deadline = time.monotonic() + {REGISTRATION_WAIT_S}
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
services.get_node = get_node
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
"""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held open at once while they are picked."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(width: int, attempts: int = 200) -> tuple[int, int]:
    """A run of ``width`` consecutive free ports (Ray's worker port range)."""
    import random

    for _ in range(attempts):
        low = random.randrange(20000, 60000 - width)
        socks = []
        try:
            for port in range(low, low + width):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            return low, low + width - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


def _start_priority() -> None:
    """A node starts at a raised priority where that is allowed (root, as in CI): its raylet aborts when the
    node's Python agents take longer than Ray's fixed 30 s to report their ports, which a machine busy with
    other test runs makes them do. Lowered back to normal once the node is up."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass


@dataclass
class RayCluster:
    """A head and one worker node, started by ``start`` and stopped by ``stop``."""

    head_cpus: int = 2
    worker_cpus: int = 2
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="syncd-ray-", dir="/tmp")))
    address: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a driver (or a ``syncd reindex --ray`` process) needs in its environment to join."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.root / "token"),
                "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, timeout: float = 700.0) -> RayCluster:
        (self.root / "token").write_text(secrets.token_hex(32))
        ports = free_ports(16)
        head_port = ports[0]
        self.address = f"127.0.0.1:{head_port}"
        head_workers = free_port_range(40)
        node_workers = free_port_range(40)
        common = ["--disable-usage-stats", "--block", "--log-style=record"]
        head = [sys.executable, "-c", _RAY_START, "start", "--head", f"--port={head_port}",
                f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                f"--temp-dir={self.root / 'tmp'}", f"--node-manager-port={ports[1]}",
                f"--object-manager-port={ports[2]}", "--include-dashboard=false", f"--dashboard-port={ports[3]}",
                f"--dashboard-agent-listen-port={ports[4]}", f"--dashboard-agent-grpc-port={ports[5]}",
                f"--metrics-export-port={ports[6]}", f"--runtime-env-agent-port={ports[7]}",
                f"--min-worker-port={head_workers[0]}", f"--max-worker-port={head_workers[1]}",
                "--object-store-memory=120000000", *common]
        worker = [sys.executable, "-c", _RAY_START, "start", f"--address={self.address}",
                  f"--num-cpus={self.worker_cpus}", "--num-gpus=0",
                  f"--node-manager-port={ports[8]}", f"--object-manager-port={ports[9]}",
                  f"--dashboard-agent-listen-port={ports[10]}", f"--dashboard-agent-grpc-port={ports[11]}",
                  f"--metrics-export-port={ports[12]}", f"--runtime-env-agent-port={ports[13]}",
                  f"--min-worker-port={node_workers[0]}", f"--max-worker-port={node_workers[1]}",
                  "--object-store-memory=120000000", *common]
        # A loaded machine starts Ray's Python agents slowly: the raylet's waits for them (30 s by default) are
        # stretched, as is the registration of workers.
        env = {**os.environ, **self.env, "RAY_agent_register_timeout_ms": str(REGISTRATION_WAIT_S * 1000),
               "RAY_raylet_start_wait_time_s": str(REGISTRATION_WAIT_S),
               "RAY_worker_register_timeout_seconds": str(REGISTRATION_WAIT_S)}
        try:
            self._start_node(head, env, "head", 1, timeout)
            self._start_node(worker, env, "worker", 2, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, argv: list[str], env: dict[str, str], name: str, nodes: int, timeout: float,
                    attempts: int = 10) -> None:
        """Start one node and wait until the cluster counts ``nodes``. On a loaded machine a node can fail to
        start: its raylet gives the node's Python agents a fixed 15 s to report their ports and aborts when
        they import slower (their imports are then in the page cache, so a second attempt is faster). Such a
        node's processes are stopped and it is started again."""
        for attempt in range(attempts):
            began = time.time()
            proc = self._spawn(argv, env, f"{name}-{attempt}")
            self.processes.append(proc)
            if self._wait_nodes(nodes, timeout, proc, since=began):
                self._normal_priority(proc)
                return
            self._kill_group(proc)
            self.processes.remove(proc)
        raise RuntimeError(f"the Ray {name} node did not start in {attempts} attempts:\n{self.logs()}")

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_start_priority)

    def _normal_priority(self, proc: subprocess.Popen[bytes]) -> None:
        """Back to the ordinary priority once the node is up (see ``_start_priority``)."""
        for pid in self.pids(groups={proc.pid}):
            try:
                os.setpriority(os.PRIO_PROCESS, pid, 0)
            except OSError:
                pass

    def _raylet_aborted(self, since: float) -> bool:
        for err in self.root.glob("tmp/session_*/logs/raylet*.err"):
            try:
                if err.stat().st_mtime >= since and "Check failed" in err.read_text(errors="replace"):
                    return True
            except OSError:
                continue
        return False

    def _wait_nodes(self, count: int, timeout: float, proc: subprocess.Popen[bytes], since: float = 0.0) -> bool:
        """Whether the cluster reports ``count`` live nodes, and their CPUs in its resources (a syncd driver
        checks them at once), before ``proc`` exits or ``timeout`` passes (asked by one probe process, a
        driver of its own, which polls)."""
        code = ("import ray,sys,time; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
                "deadline = time.monotonic() + float(sys.argv[3])\n"
                "while time.monotonic() < deadline:\n"
                "    n = sum(1 for n in ray.nodes() if n['Alive'])\n"
                "    cpus = ray.cluster_resources().get('CPU', 0)\n"
                "    if n >= int(sys.argv[2]) and cpus >= float(sys.argv[4]): print(n); break\n"
                "    time.sleep(0.5)\n")
        deadline = time.monotonic() + timeout
        probe: subprocess.Popen[bytes] | None = None
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None or self._raylet_aborted(since):
                    return False
                if probe is None:
                    probe = subprocess.Popen([sys.executable, "-c", code, self.address, str(count), str(timeout),
                                              str(self.head_cpus + (self.worker_cpus if count > 1 else 0))],
                                             env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL)
                elif probe.poll() is not None:  # answered, or could not join yet (the head still starting)
                    if probe.stdout is not None and probe.stdout.read().strip():
                        return True
                    probe = None
                time.sleep(0.5)
            return False
        finally:
            if probe is not None and probe.poll() is None:
                probe.kill()
                probe.wait()

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        for pid in self.pids(groups={proc.pid}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.root.glob("*.log")))

    def pids(self, groups: set[int] | None = None) -> list[int]:
        """Every process of this cluster: the two ``ray start --block`` sessions and whatever they started
        (each runs in a session of its own, so its process group holds its GCS, raylet and workers)."""
        found = []
        groups = {p.pid for p in self.processes} if groups is None else groups
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[3]) in groups or int(fields[2]) in groups:  # session id or process group
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
