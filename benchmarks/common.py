"""What every benchmark reports alongside its figures."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """CPU model, cores, RAM, OS and Python: the figures mean little without them."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GiB RAM, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
