"""Bounds for hostile-input tests: a fuzz case that runs too long raises ``Hang``, one that allocates more than
``MEMORY_HEADROOM`` beyond what the process holds fails its allocation; ``run_cases`` runs a fuzz test's cases;
``twice_at_once`` races two calls."""

from __future__ import annotations

import re
import resource
import signal
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

MEMORY_HEADROOM = 1 << 30  # a case may map or allocate this much beyond what the process already holds
ALLOCATION_FAILURE = re.compile(r"can't allocate|out of memory|MemoryError|Cannot allocate", re.IGNORECASE)


class Hang(Exception):
    """A case ran past its time budget."""


@contextmanager
def budget(seconds: float):
    """Raise ``Hang`` in the test's own thread when the case runs too long; cap the address space meanwhile."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (min(cap, hard) if hard != resource.RLIM_INFINITY else cap, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cases(
    count: int, write_case: Callable[[int], tuple[Path, str]], outcome: Callable[[Path], str]
) -> tuple[list[str], Counter[str]]:
    """Fuzz cases: ``write_case(i)`` writes the i-th mutated file and says how it was made; ``outcome(path)``
    names what became of it or raises ``AssertionError`` / ``Hang``. Returns the failed cases (a line each) and
    how many cases ended in each outcome."""
    findings: list[str] = []
    tally: Counter[str] = Counter()
    for index in range(count):
        path, how = write_case(index)
        try:
            tally[outcome(path)] += 1
        except (AssertionError, Hang) as error:
            findings.append(f"case {index} ({how}): {error}")
        path.unlink()
    return findings, tally


def unexpected(error: BaseException) -> AssertionError:
    """A fuzz finding: an exception the code under test should not have raised, with where it was raised."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return AssertionError(f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(error)[:200]}")


def _address_space() -> int:
    """Bytes of virtual memory the process holds now (``VmSize``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def twice_at_once(call: Callable[[], object]) -> tuple[list, list[Exception]]:
    """Run ``call`` in two threads at the same time; their results and the exceptions they raised."""
    results, errors = [], []

    def run() -> None:
        try:
            results.append(call())
        except Exception as error:  # noqa: BLE001 - collected for the caller's assertion
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors
