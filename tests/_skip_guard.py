"""Skip policy, imported by conftest.py: gpu-marked tests are the one skip CI allows.

- A test marked ``gpu`` is skipped when torch sees no CUDA device, with a reason that says so.
- With ``FACE_CONCEPTS_FORBID_SKIPS=1`` (set by ``.ci/run``), any other skip — a missing package,
  a missing dataset, a skip at collection — turns the run's exit status into a failure, and one
  line lists the skipped tests with their reasons. Without it (``make test`` on a laptop) skips
  are allowed, as before.
"""

from __future__ import annotations

import os

import pytest

FORBID_SKIPS_ENV = "FACE_CONCEPTS_FORBID_SKIPS"
GPU_SKIP_REASON = "gpu-marked test: no CUDA device here (the one skip CI allows)"


def forbid_skips() -> bool:
    return os.environ.get(FORBID_SKIPS_ENV, "") not in ("", "0")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = (
        str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    )
    return reason.removeprefix("Skipped: ")


class SkipGuard:
    """Records every skip (test or collector); fails the session on a non-gpu skip."""

    def __init__(self) -> None:
        self.gpu: list[str] = []
        self.forbidden: list[str] = []

    def _record(self, report, is_gpu: bool) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is not a skip
            entry = f"{report.nodeid} ({_reason(report)})"
            (self.gpu if is_gpu else self.forbidden).append(entry)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report, "gpu" in report.keywords)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report, False)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.forbidden and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        # Outermost wrapper: the verdict comes after pytest's short summary, right above the counts.
        result = yield
        if self.gpu:
            terminalreporter.write_line(
                f"{FORBID_SKIPS_ENV}: {len(self.gpu)} gpu-marked test(s) skipped "
                "(no CUDA device; allowed)"
            )
        if self.forbidden:
            terminalreporter.write_line(
                f"{FORBID_SKIPS_ENV}: FAILED: {len(self.forbidden)} test(s) skipped for a missing "
                "dependency (only gpu-marked tests may skip; install what they name): "
                + "; ".join(self.forbidden),
                red=True,
                bold=True,
            )
        return result


def pytest_configure(config: pytest.Config) -> None:
    if forbid_skips():
        config.pluginmanager.register(SkipGuard(), "face_concepts_skip_guard")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))
