"""Test-suite policy for kernel tests.

Tests marked ``kernel`` load programs into the running kernel.  Where the process lacks the privilege they
skip, so that a developer without root can still run the pure tests.  With ``KESTREL_REQUIRE_KERNEL=1``
(``.ci/run`` sets it) a skip of a kernel test is turned into a failure: CI must prove the kernel path, not
skip it.  The one deliberate exception is a feature this kernel does not have, which a test reports with
``kernel_lacks(why)``; the reason is printed in the summary so the gap stays visible.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_KERNEL = os.environ.get("KESTREL_REQUIRE_KERNEL") == "1"
KERNEL_LACKS_PREFIX = "kernel lacks: "

from kestrel_raw.kernel.caps import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def kernel_privilege_problem() -> str | None:
    """Why this process cannot run kernel tests, or None when it can."""
    caps = _cap_eff()
    missing = []
    if not caps & (1 << CAP_SYS_ADMIN):
        if not caps & (1 << CAP_BPF):
            missing.append("CAP_BPF")
        if not caps & (1 << CAP_PERFMON):
            missing.append("CAP_PERFMON")
    if missing:
        return "process lacks " + " and ".join(missing) + " (run the tests as root)"
    return None


def kernel_lacks(why: str) -> None:
    """Skip because the running kernel does not have a feature; allowed even when kernel tests are required."""
    pytest.skip(KERNEL_LACKS_PREFIX + why)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    problem = kernel_privilege_problem()
    if problem is None:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"kernel test cannot run: {problem}; KESTREL_REQUIRE_KERNEL=1 forbids skipping it")
    pytest.skip(problem)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_KERNEL and report.skipped and item.get_closest_marker("kernel") is not None):
        return
    reason = ""
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = str(report.longrepr[2])
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if reason.startswith(KERNEL_LACKS_PREFIX):
        return
    report.outcome = "failed"
    report.longrepr = f"kernel test skipped ({reason}), but KESTREL_REQUIRE_KERNEL=1 forbids skipping it"
