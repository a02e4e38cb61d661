"""--pin-cpus: each worker runs on one CPU of the allowed set, worker i on CPU i."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.fixture_apps.process import polycorn

ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_pin_cpus_gives_each_worker_its_own_cpu(mode: str) -> None:
    workers = min(2, len(ALLOWED))
    child = polycorn(
        "tests.fixture_apps.affinity_app:app",
        "--port", "0", "--workers", str(workers), "--worker-mode", mode, "--pin-cpus", "--no-access-log",
    )  # fmt: skip
    try:
        url = child.url()
        child.wait_for(f"all {workers} workers ready")
        seen: dict[tuple[int, int], list[int]] = {}
        for _ in range(200):
            with httpx.Client() as client:  # a fresh connection each time: the kernel spreads them
                info = client.get(url + "/").json()
            seen[(info["pid"], info["thread"])] = info["cpus"]
            if len(seen) == workers:
                break
        assert len(seen) == workers, f"only {len(seen)} of {workers} workers answered"
        cpu_sets = list(seen.values())
        assert all(len(cpus) == 1 for cpus in cpu_sets), cpu_sets
        assert sorted(c[0] for c in cpu_sets) == ALLOWED[:workers]
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0, child.output


def test_without_pinning_workers_keep_the_whole_affinity_mask() -> None:
    child = polycorn("tests.fixture_apps.affinity_app:app", "--port", "0", "--workers", "2", "--no-access-log")
    try:
        url = child.url()
        child.wait_for("all 2 workers ready")
        with httpx.Client() as client:
            assert client.get(url + "/").json()["cpus"] == ALLOWED
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0, child.output
