"""The supervisor through `qnode start`: ready line, lock refusal, restarts, clean stop."""

from __future__ import annotations

from conftest import process_alive


def test_start_prints_ready_and_sigterm_exits_zero(node_factory) -> None:
    n = node_factory(workers=2)
    assert any(f"qnode node 0 ready on {n.bootstrap} (2 workers)" in line
               for line in n.stdout_lines)
    children = n.child_pids()
    assert set(children) == {"coordinator", "worker 0", "worker 1"}
    assert n.shm_names(), "workers publish their shm tables"
    assert n.stop() == 0
    assert not any(process_alive(p) for p in children.values())
    assert n.shm_names() == [], "a clean stop leaves no shm name behind"
