"""A qnode node for one load-test run: `qnode start` on a free port and a temporary data dir.

Also the fault injector: `kill9_worker` finds the worker process that serves a given endpoint
(the descendant of the supervisor listening on that port) and SIGKILLs it; the supervisor is
expected to restart it. Works under gevent (subprocess is patched; psutil only reads /proc).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil

DATA_PREFIX = "qnode-loadtest-"
PR_SET_PDEATHSIG = 1


class NodeError(RuntimeError):
    """The node would not start, stop cleanly, or offer a worker to kill."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qnode_command() -> list[str]:
    script = Path(sys.executable).with_name("qnode")
    if script.exists():
        return [str(script)]
    found = shutil.which("qnode")
    if found:
        return [found]
    return [sys.executable, "-c", "from qnode.node.cli import main; main()"]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM us when the runner dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def sweep_stale_data_dirs(root: Path | None = None) -> list[Path]:
    """Remove temporary data dirs of earlier runs whose node is gone (its lock is free).

    A runner killed outright cannot clean up after itself; a backlog run leaves gigabytes.
    The node holds an exclusive flock on `<data_dir>/.lock` for as long as it runs, so a
    lock we can take ourselves belongs to nobody and the directory is safe to delete.
    """
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{DATA_PREFIX}*"):
        lock = d / ".lock"
        try:
            if time.time() - d.stat().st_mtime < 60:
                continue  # a run starting right now may not hold its lock yet
            fd = os.open(lock, os.O_RDONLY) if lock.exists() else None
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live node
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def port_of(endpoint: str) -> int:
    port = urlparse(endpoint).port
    if port is None:
        raise NodeError(f"endpoint {endpoint!r} has no port")
    return port


@dataclass
class LocalNode:
    bootstrap: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    remove_data_dir: bool

    @classmethod
    def start(cls, log_dir: Path, workers: int | None = None, config: Path | None = None,
              data_dir: Path | None = None, extra_args: list[str] | None = None) -> LocalNode:
        """Start `qnode start` in the background; readiness is checked by its first client."""
        remove = data_dir is None
        data = data_dir or Path(tempfile.mkdtemp(prefix=DATA_PREFIX))
        bootstrap = f"tcp://127.0.0.1:{free_port()}"
        args = [*qnode_command(), "start", "--data-dir", str(data), "--listen", bootstrap]
        if config is not None:
            args += ["--config", str(config)]
        if workers:
            args += ["--workers", str(workers)]
        args += extra_args or []
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / "node.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        time.sleep(0.05)
        if proc.poll() is not None:
            raise NodeError(f"qnode start exited with {proc.returncode}: {log_path.read_text()}")
        return cls(bootstrap, data, proc, log_path, remove)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the node's processes alive now (supervisor included)."""
        total = 0.0
        for p in [self.proc.pid, *self.descendants()]:
            try:
                t = (psutil.Process(p) if isinstance(p, int) else p).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return round(total, 3)

    def pid_listening_on(self, port: int) -> int | None:
        for child in self.descendants():
            try:
                conns = child.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
                return child.pid
        return None

    def kill9_worker(self, endpoints: list[str]) -> int:
        """SIGKILL the worker serving the first of `endpoints` found; returns its pid."""
        bootstrap_port = port_of(self.bootstrap)
        for endpoint in endpoints:
            port = port_of(endpoint)
            if port == bootstrap_port:
                continue
            pid = self.pid_listening_on(port)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return pid
        raise NodeError(f"no worker process listens on any of {endpoints}")

    def shm_leftovers(self, unlink: bool = True) -> list[str]:
        """POSIX shm tables of this node's data dir still present (unlinked when asked)."""
        from qnode.node.shm_table import shm_name

        digest = shm_name(0, str(self.data_dir), 0).split(".")[2]
        shm = Path("/dev/shm")
        found = sorted(p.name for p in shm.glob(f"qnode.*.{digest}.w*")) if shm.is_dir() else []
        if unlink:
            for name in found:
                (shm / name).unlink(missing_ok=True)
        return found

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the clean path) and wait; SIGKILL the whole group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode
