"""Shared by the benchmark scripts: timing medians, peak memory, and writing a section of a docs page."""

from __future__ import annotations

import gc
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(functions: list[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> list[float]:
    """Median wall time in seconds of each function, the functions taking turns in every round so that
    the load of a shared machine falls on all of them alike."""
    for fn in functions:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, record in zip(functions, times, strict=True):
            record.append(median_time(fn, repeats=1, warmup=0))
    return [statistics.median(record) for record in times]


def peak_memory(fn: Callable[[], object], interval: float = 0.002) -> float:
    """Peak resident memory above the level before the call, in MiB, sampled every ``interval`` s."""
    gc.collect()
    process = psutil.Process()
    base = process.memory_info().rss
    peak = base
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak = max(peak, process.memory_info().rss)
    return (peak - base) / 2**20


def machine() -> str:
    """One line naming the machine and the thread count a figure used."""
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_section(page: str, section: str, markdown: str) -> Path:
    """Replace the block between ``<!-- section:start -->`` and ``<!-- section:end -->`` in docs/page."""
    path = DOCS / page
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
