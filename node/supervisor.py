"""The supervisor: one node's parent process — spawns, watches, restarts and stops its children.

Children are `python -m qnode.node.process_main coordinator | worker <id>` (node/process_main.py),
each given the validated config as JSON and the data-dir lock fd (so the lock outlives a
killed supervisor until its last child is gone). The coordinator reports on a pipe: when it
serves, and each worker that said hello and applied the metadata log; once all did, one line
goes to stdout: `qnode node 0 ready on tcp://127.0.0.1:9700 (2 workers)`.

A child that dies is restarted after a backoff (`supervisor.restart.backoff.ms`, doubled per
crash in a row up to `supervisor.restart.backoff.max.ms`; a child that ran a while starts the
streak again), after its shared-memory names are unlinked. A coordinator that dies before it
ever served (port taken, bad data dir) is not retried: the node exits 1. SIGTERM/SIGINT are
forwarded as SIGTERM; children get `supervisor.shutdown.timeout.ms` to exit, then SIGKILL. The
supervisor exits 0 when every child exited cleanly. It wakes on signals (SIGCHLD included)
through a wakeup pipe and on the coordinator's pipe: no polling loop.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import posix_ipc

from qnode.node.config import NodeConfig
from qnode.node.lockfile import DataDirLock
from qnode.node.process_main import CONFIG_ENV, NOTIFY_ENV
from qnode.node.shm_table import shm_name

log = logging.getLogger(__name__)

STABLE_AFTER_S = 10.0  # a child that ran this long before dying starts a new crash streak
_SHM_DIR = Path("/dev/shm")


class StartupError(Exception):
    """The node cannot start (its coordinator died before serving)."""


@dataclass
class Child:
    role: str  # "coordinator" | "worker"
    worker_id: int = -1
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    streak: int = 0  # crashes in a row
    restart_at: float | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return "coordinator" if self.role == "coordinator" else f"worker {self.worker_id}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def node_shm_names(node_id: int, data_dir: Path, worker_id: int | None = None) -> list[str]:
    """POSIX shm and semaphore names (as /dev/shm entries) of a node's worker, or of all."""
    base = shm_name(node_id, str(data_dir), 0)[1:]  # qnode.<node>.<hash>.w0
    prefix = base[: -len("w0")]
    wanted = prefix if worker_id is None else f"{prefix}w{worker_id}"
    try:
        entries = os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        name = entry[4:] if entry.startswith("sem.") else entry
        if worker_id is None:
            if name.startswith(wanted):
                out.append(entry)
        elif name == wanted or name.startswith(wanted + "."):
            out.append(entry)
    return out


def unlink_shm(entries: list[str]) -> None:
    for entry in entries:
        try:
            if entry.startswith("sem."):
                posix_ipc.unlink_semaphore("/" + entry[4:])
            else:
                posix_ipc.unlink_shared_memory("/" + entry)
        except posix_ipc.ExistentialError:
            pass  # gone already: the owner cleaned up after all


class Supervisor:
    """Runs one node until SIGTERM/SIGINT."""

    def __init__(self, config: NodeConfig, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.lock = DataDirLock(config.data_dir)
        self.coordinator = Child("coordinator")
        self.workers = [Child("worker", i) for i in range(config.workers)]
        self.stopping = False
        self.ready = False
        self.coordinator_served = False
        self.hello: set[int] = set()
        self._notify_buf = b""
        self._notify_r = self._notify_w = -1
        self._wake_r = self._wake_w = -1
        self._env = dict(os.environ, **{CONFIG_ENV: config.to_json()})

    @property
    def children(self) -> list[Child]:
        return [self.coordinator, *self.workers]

    # ---- spawning -------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        args = [sys.executable, "-m", "qnode.node.process_main", child.role]
        env = dict(self._env)
        fds = [self.lock.fd]
        if child.role == "worker":
            args.append(str(child.worker_id))
            unlink_shm(node_shm_names(self.config.node_id, self.config.data_dir, child.worker_id))
        else:
            env[NOTIFY_ENV] = str(self._notify_w)
            fds.append(self._notify_w)
        child.proc = subprocess.Popen(
            args, env=env, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno()
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def _on_exit(self, child: Child, code: int) -> None:
        pid = child.proc.pid if child.proc else -1
        child.proc = None
        if child.role == "worker":
            self.hello.discard(child.worker_id)
        if self.stopping:
            log.info("%s (pid %d) exited with %s", child.name, pid, _describe(code))
            return
        if child.role == "coordinator" and not self.coordinator_served:
            raise StartupError(
                f"the coordinator exited with {_describe(code)} before serving (see its log above)"
            )
        ran = time.monotonic() - child.started_at
        child.streak = 1 if ran >= STABLE_AFTER_S else child.streak + 1
        base = self.config.get("supervisor.restart.backoff.ms")
        cap = self.config.get("supervisor.restart.backoff.max.ms")
        delay_ms = min(cap, base * (2 ** (child.streak - 1)))
        child.restart_at = time.monotonic() + delay_ms / 1000
        child.restarts += 1
        log.warning(
            "%s (pid %d) exited with %s after %.1f s; restarting in %d ms (restart #%d)",
            child.name,
            pid,
            _describe(code),
            ran,
            delay_ms,
            child.restarts,
        )

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start the node and supervise it; the exit code of `qnode start`."""
        if self.lock.fd is None:  # the caller may have taken it to check the data dir first
            self.lock.acquire()  # DataDirLockedError propagates: the caller prints it
        try:
            return self._run_locked()
        finally:
            self.lock.release()

    def _run_locked(self) -> int:
        self._notify_r, self._notify_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._notify_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        try:
            try:
                self._spawn(self.coordinator)
                for w in self.workers:
                    self._spawn(w)
                while not self.stopping:
                    self._wait()
                    self._reap()
                    self._restart_due()
                return self._shutdown()
            except StartupError as exc:
                log.error("%s", exc)
                self.stopping = True
                self._shutdown()
                return 1
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            for fd in (self._notify_r, self._notify_w, self._wake_r, self._wake_w):
                os.close(fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            log.info("got %s: stopping the node", signal.Signals(signum).name)
            self.stopping = True

    def _wait(self) -> None:
        timeout = None
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        if due:
            timeout = max(0.0, min(due) - time.monotonic())
        try:
            readable, _, _ = select.select([self._wake_r, self._notify_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            _drain(self._wake_r)
        if self._notify_r in readable:
            self._read_notify()

    def _read_notify(self) -> None:
        try:
            while chunk := os.read(self._notify_r, 4096):
                self._notify_buf += chunk
        except BlockingIOError:
            pass
        *lines, self._notify_buf = self._notify_buf.split(b"\n")
        for raw in lines:
            parts = raw.decode(errors="replace").split()
            if parts[:2] == ["coordinator", "ready"]:
                self.coordinator_served = True
            elif len(parts) == 3 and parts[0] == "worker" and parts[1].isdigit():
                wid, pid = int(parts[1]), int(parts[2]) if parts[2].isdigit() else -1
                if 0 <= wid < len(self.workers):
                    proc = self.workers[wid].proc
                    if proc is not None and proc.pid == pid:
                        self.hello.add(wid)
        if not self.ready and self.coordinator_served and len(self.hello) == len(self.workers):
            self.ready = True
            n = len(self.workers)
            line = (
                f"qnode node {self.config.node_id} ready on {self.config.listen} "
                f"({n} worker{'' if n == 1 else 's'})"
            )
            try:
                print(line, file=self.out, flush=True)
            except OSError:  # stdout closed (`qnode start | head -1`): the node runs on
                log.info("%s", line)

    def _reap(self) -> None:
        for child in self.children:
            proc = child.proc
            if proc is None or not _exited(proc):
                continue
            if child.role == "worker":
                # Unlinked while the dead worker is still a zombie: whoever learns of its death
                # from its pid (the coordinator's kill(pid, 0)) must not find its table named.
                unlink_shm(
                    node_shm_names(self.config.node_id, self.config.data_dir, child.worker_id))
            self._on_exit(child, proc.wait())

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now and not self.stopping:
                self._spawn(child)

    # ---- stopping ---------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """SIGTERM every child, wait (bounded), SIGKILL stragglers; 0 if all exited cleanly."""
        live = [c for c in self.children if c.proc is not None]
        for c in live:
            _signal(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.config.get("supervisor.shutdown.timeout.ms") / 1000
        clean = True
        for c in live:
            assert c.proc is not None
            try:
                code = c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) did not stop in time: killing it", c.name, c.proc.pid)
                c.proc.kill()
                code = c.proc.wait()
            if code != 0:
                clean = False
            self._on_exit(c, code)
        unlink_shm(node_shm_names(self.config.node_id, self.config.data_dir))
        log.info("node %d stopped%s", self.config.node_id, "" if clean else " (not cleanly)")
        return 0 if clean else 1


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it (its pid stays taken until wait())."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already (by Popen itself): wait() returns its code
        return True


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
