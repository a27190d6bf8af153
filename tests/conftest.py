"""Shared fixtures: free ports, real nodes started with `qnode start`, and their cleanup.

    def test_something(node):                    # a started 2-worker node on free ports
        admin = Admin(bootstrap=node.bootstrap)

    def test_custom(node_factory):
        n = node_factory(workers=1, config={"flush.messages": 1})   # extra node.toml keys
        n.kill_child("worker", 0)                 # kill -9 one child; the supervisor restarts it
        n.kill()                                  # kill -9 the whole node (supervisor + children)
        n.restart()                               # same data dir and port, waits for ready
        n.stop()                                  # SIGTERM: asserts exit 0 and no child left

Every node is torn down at the end of its test whatever happened: all its processes killed
and every `/dev/shm` name of that node (shm tables, semaphores) unlinked. Timeouts are
bounded; a node that does not get ready shows the tail of its log in the failure.

Also here: `tmpfs(size)` mounts a tiny tmpfs for real ENOSPC (skips without root), and the
worker tests' `feed` / `worker` fixtures come from tests/node/worker_harness.py (a plugin).
"""

from __future__ import annotations

import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The worker harness (tests/node/worker_harness.py) is imported by name from node and fault
# tests; as a plugin its `feed` and `worker` fixtures serve both.
sys.path.insert(0, str(Path(__file__).resolve().parent / "node"))
pytest_plugins = ("worker_harness",)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_LAUNCH = "import sys; from qnode.node.cli import main; sys.argv[0] = 'qnode'; main()"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_endpoint(host: str = "127.0.0.1") -> str:
    return f"tcp://{host}:{free_port(host)}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ... utime at
    index 11, stime at 12); raises FileNotFoundError/ProcessLookupError once it is gone."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        state = proc_stat(pid)[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live child pids of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = proc_stat(entry)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class NodeProcess:
    """One `qnode start` process (supervisor + coordinator + workers) under test."""

    def __init__(
        self,
        base_dir: Path,
        workers: int = 2,
        node_id: int = 0,
        config: dict[str, Any] | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        open_files: int | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.open_files = open_files  # the node's RLIMIT_NOFILE (soft and hard), if set
        self.data_dir = base_dir / "data"
        self.workers = workers
        self.node_id = node_id
        self.port = port or free_port()
        self.bootstrap = f"tcp://127.0.0.1:{self.port}"
        self.config_path = base_dir / "node.toml"
        self.config_path.write_text(
            "".join(f"{k} = {_toml_value(v)}\n" for k, v in (config or {}).items())
        )
        self.extra_args = extra_args or []
        self.log_path = base_dir / "node.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.seen_pids: set[int] = set()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            _LAUNCH,
            "start",
            "--config",
            str(self.config_path),
            "--data-dir",
            str(self.data_dir),
            "--node-id",
            str(self.node_id),
            "--workers",
            str(self.workers),
            "--listen",
            self.bootstrap,
            *self.extra_args,
        ]

    def spawn(self) -> subprocess.Popen:
        """Start `qnode start` without waiting for it (see `wait_ready`)."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        self._lines = queue.Queue()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=self.base_dir,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        log.close()
        self.returncode = None
        self.seen_pids.add(self.proc.pid)
        # The reader gets this process's queue, not `self._lines`: after a kill -9 the old
        # reader may see its EOF only once restart() has spawned the next process, and its
        # end-of-output must not tell wait_ready that the new one exited (it then waited on
        # a running process until the test timed out).
        threading.Thread(target=self._read_stdout, args=(self.proc, self._lines),
                         daemon=True).start()
        return self.proc

    def _limit_open_files(self) -> None:  # in the child, before exec
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _read_stdout(self, proc: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> NodeProcess:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"node not ready after {timeout:.0f} s\n{self.log_tail()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                try:
                    code = self.proc.wait(10) if self.proc else None
                except subprocess.TimeoutExpired:
                    code = "nothing (still running, its output closed)"
                pytest.fail(f"qnode start exited with {code} before ready\n{self.log_tail()}")
            if " ready on " in line:
                self.child_pids()  # remember them for cleanup
                return self

    def start(self, timeout: float = READY_TIMEOUT_S) -> NodeProcess:
        self.spawn()
        return self.wait_ready(timeout)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> NodeProcess:
        """Start again on the same data dir and port (after `stop` or `kill`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start(timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def child_pids(self) -> dict[str, int]:
        """{"coordinator": pid, "worker 0": pid, ...} of the live children."""
        out = {}
        if self.proc is None:
            return out
        for pid in children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except FileNotFoundError:
                continue
            if b"qnode.node.process_main" in args:
                i = args.index(b"qnode.node.process_main")
                role = " ".join(a.decode() for a in args[i + 1 :] if a)
                out[role] = pid
                self.seen_pids.add(pid)
        return out

    def kill_child(self, role: str, worker_id: int | None = None, sig: int = signal.SIGKILL) -> int:
        """Signal one child ("coordinator", or "worker" with `worker_id`); returns its pid."""
        name = role if worker_id is None else f"{role} {worker_id}"
        pid = self.child_pids().get(name)
        assert pid is not None, f"no live {name} in {self.child_pids()}"
        os.kill(pid, sig)
        return pid

    def wait_child_restarted(
        self,
        role: str,
        old_pid: int,
        worker_id: int | None = None,
        timeout: float = READY_TIMEOUT_S,
    ) -> int:
        name = role if worker_id is None else f"{role} {worker_id}"

        def new_pid() -> int | None:
            pid = self.child_pids().get(name)
            return pid if pid is not None and pid != old_pid else None

        return wait_for(new_pid, timeout, f"{name} to be restarted")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole node at once (every child, then the supervisor) and wait
        until they are all gone: a power cut, when sig is SIGKILL."""
        if self.proc is None:
            return
        children = list(self.child_pids().values())
        # Freeze the supervisor first: it can neither restart a child nor let the children
        # see it die (PR_SET_PDEATHSIG) and shut down cleanly before the signal lands.
        order = [*children, self.proc.pid]
        try:
            os.kill(self.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        for pid in order:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig != signal.SIGKILL:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.returncode = self.proc.wait(STOP_TIMEOUT_S)
        wait_for(
            lambda: not any(process_alive(p) for p in children),
            STOP_TIMEOUT_S,
            "the node's children to die",
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the supervisor; assert it exits 0 and leaves no child behind."""
        assert self.proc is not None
        children = list(self.child_pids().values())
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node did not stop within {timeout:.0f} s\n{self.log_tail()}")
        assert self.returncode == 0, f"qnode start exited {self.returncode}\n{self.log_tail()}"
        left = [p for p in children if process_alive(p)]
        assert not left, f"children still alive after stop: {left}"
        return self.returncode

    def cleanup(self) -> None:
        """Kill whatever is left of the node and unlink its shared-memory names."""
        if self.proc is not None and self.proc.poll() is None:
            self.child_pids()
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        for pid in self.seen_pids:
            if process_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in self.seen_pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        from qnode.node.supervisor import node_shm_names, unlink_shm

        unlink_shm(node_shm_names(self.node_id, self.data_dir))

    def shm_names(self) -> list[str]:
        from qnode.node.supervisor import node_shm_names

        return node_shm_names(self.node_id, self.data_dir)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class CoordinatorProcess:
    """A coordinator process alone (`process_main coordinator`), no supervisor, no workers:
    for tests of the bootstrap endpoint and the metadata log over real processes."""

    def __init__(
        self, base_dir: Path, config: dict[str, Any] | None = None, port: int | None = None
    ) -> None:
        from qnode.node.config import load_config

        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.port = port or free_port()
        self.bootstrap = f"tcp://127.0.0.1:{self.port}"
        overrides = {"data.dir": str(self.data_dir), "listen": self.bootstrap, "workers": 2}
        overrides.update(config or {})
        self.config = load_config(None, overrides)
        self.log_path = base_dir / "coordinator.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = READY_TIMEOUT_S) -> CoordinatorProcess:
        from qnode.node.process_main import CONFIG_ENV, NOTIFY_ENV

        self.data_dir.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        env = dict(os.environ, **{CONFIG_ENV: self.config.to_json(), NOTIFY_ENV: str(w)})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnode.node.process_main", "coordinator"],
            env=env,
            pass_fds=(w,),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        os.close(w)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            with os.fdopen(r) as f:
                for line in f:
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line or not line.startswith("coordinator ready"):
            self.kill()
            pytest.fail(f"coordinator not ready: {line!r}\n{self.log_path.read_text()[-3000:]}")
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        assert code == 0, f"coordinator exited {code}\n{self.log_path.read_text()[-3000:]}"
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def restart(self) -> CoordinatorProcess:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start()


class RawClient:
    """A DEALER speaking the wire protocol by hand (transport/frame.py), for tests."""

    def __init__(self, endpoint: str, timeout_ms: int = 10_000) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.timeout_ms = timeout_ms
        self._corr = 0

    def send(self, frames: list[Any]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int | None = None) -> Any:
        """The next response, decoded (fails the test when none comes in time)."""
        from qnode.transport.frame import decode_response

        if not self.sock.poll(self.timeout_ms if timeout_ms is None else timeout_ms):
            pytest.fail("no response from the server in time")
        return decode_response(self.sock.recv_multipart())

    def call(self, api_key: int, body: dict[str, Any], **options: Any) -> Any:
        """Send one request and return its `Response` (fails the test on no answer);
        `options` as for `try_call`: version, data, timeout_ms."""
        resp = self.try_call(api_key, body, **options)
        if resp is None:
            pytest.fail(f"no response to API {api_key} in time")
        return resp

    def try_call(
        self,
        api_key: int,
        body: dict[str, Any],
        version: int = 0,
        data: tuple[Any, ...] = (),
        timeout_ms: int | None = None,
    ) -> Any:
        """Like `call`, but None when no answer comes in time (a server restarting...).
        Late answers to earlier requests are skipped by correlation id."""
        from qnode.transport.frame import decode_response, encode_request

        self._corr += 1
        self.send(encode_request(api_key, version, self._corr, body, data, client_id="test"))
        deadline = time.monotonic() + (self.timeout_ms if timeout_ms is None else timeout_ms) / 1000
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not self.sock.poll(left):
                return None
            resp = decode_response(self.sock.recv_multipart())
            if resp.correlation_id == self._corr:
                return resp

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Made:
    """What a factory fixture made, each torn down by `teardown` (a method name) at the end."""

    def __init__(self, teardown: str) -> None:
        self.teardown = teardown
        self.items: list[Any] = []

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def close(self) -> None:
        for item in self.items:
            getattr(item, self.teardown)()


def _process_factory(
    tmp_path: Path, prefix: str, cls: Callable[..., Any], teardown: str
) -> Iterator[Callable[..., Any]]:
    """Make processes of `cls` in numbered folders of the test's tmp dir (`start=False` to only
    create one); all torn down at the end of the test."""
    made = Made(teardown)

    def make(start: bool = True, **kwargs: Any) -> Any:
        base = tmp_path / f"{prefix}{len(made.items)}"
        base.mkdir()
        proc = made.add(cls(base, **kwargs))
        return proc.start() if start else proc

    yield make
    made.close()


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator[Callable[..., CoordinatorProcess]]:
    """Make and start lone coordinator processes; all killed at teardown."""
    yield from _process_factory(tmp_path, "coord", CoordinatorProcess, "kill")


@pytest.fixture
def raw_client_factory() -> Iterator[Callable[[str], RawClient]]:
    """`raw_client_factory(endpoint)` → RawClient; all closed at teardown."""
    made = Made("close")
    yield lambda endpoint: made.add(RawClient(endpoint))
    made.close()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Make and start nodes (kwargs of NodeProcess; `start=False` to only create one)."""
    yield from _process_factory(tmp_path, "node", NodeProcess, "cleanup")


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """A started node: 2 workers, free port, fresh data dir; torn down after the test."""
    return node_factory(workers=2)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("256k")` → the path of a fresh tmpfs of that size, for a real ENOSPC (mounting
    needs root: the test is skipped without it); every mount is lazily unmounted at teardown."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
        mnt.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            timeout=10,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def fill_fs(path: str | os.PathLike[str], leave: int) -> None:
    """Fill the filesystem of `path` up to `leave` free bytes with a file named `filler`."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "wb") as f:
        f.write(b"\0" * max(0, free - leave))
