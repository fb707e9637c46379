"""How much host memory this process may still take: what ``auto_parallel`` plans the CPU's K with.

The node's ``MemAvailable`` is not the limit inside a batch job. A SLURM job (or a container) runs
in a memory cgroup whose limit the kernel enforces with an OOM kill, which leaves Python no chance
to back off and holds every job that waits on it with ``afterok`` forever. So the figure is the
smallest of:

- ``MemAvailable`` of ``/proc/meminfo`` (free memory plus what the page cache can give back);
- for the process's memory cgroup and every cgroup above it (``/proc/self/cgroup`` names it under
  ``/sys/fs/cgroup``): its limit less its usage, the reclaimable page cache (``inactive_file``) not
  counted as used. cgroup v2: ``memory.max`` ("max": none) and ``memory.current``; v1 (the
  ``memory`` controller's own hierarchy): ``memory.limit_in_bytes`` (about 2**63: none) and
  ``memory.usage_in_bytes``. A folder that is absent or unreadable (a container that shows its own
  cgroup as the root) sets no limit;
- a SLURM job's allocation, in MiB: ``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` x the CPUs
  (``SLURM_CPUS_ON_NODE``, else ``SLURM_CPUS_PER_TASK``, else 1), or ``SLURM_MEM_PER_GPU`` x
  ``SLURM_GPUS_ON_NODE``, less what this process holds already (``VmRSS``): the one bound that still
  holds where SLURM does not confine jobs with cgroups (where it does, the cgroup's is exact).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MIB = 1 << 20
V1_NO_LIMIT = 1 << 62  # cgroup v1 writes "no limit" as 2**63 - 1 rounded down to a page


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _fields(text: str | None, sep: str = " ") -> dict:
    """``key value`` (or ``key: value``) lines as {key: first word of the value}."""
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(sep)
        if value.split():
            out[key.strip()] = value.split()[0]
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def meminfo_available(proc: str = "/proc") -> int | None:
    """The kernel's ``MemAvailable`` in bytes, None where ``/proc/meminfo`` does not give it."""
    kib = _int(_fields(_read(os.path.join(proc, "meminfo")), ":").get("MemAvailable"))
    return None if kib is None else kib * 1024


def _cgroup_folders(proc: str, root: str) -> list[tuple[str, str]]:
    """(version, folder) of this process's memory cgroup and of each cgroup above it."""
    out = []
    for line in (_read(os.path.join(proc, "self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # v2: at the root, or under unified/ (hybrid)
            bases = [("v2", root), ("v2", os.path.join(root, "unified"))]
        elif "memory" in controllers.split(","):
            bases = [("v1", os.path.join(root, "memory"))]
        else:
            continue
        names = [p for p in path.split("/") if p]
        out += [(v, os.path.join(base, *names[:i])) for v, base in bases for i in range(len(names), -1, -1)]
    return out


def _cgroup_room(version: str, folder: str) -> int | None:
    """What the cgroup ``folder`` leaves below its limit, None where it sets none (or is unreadable)."""
    if version == "v2":
        limit_file, usage_file, inactive = "memory.max", "memory.current", "inactive_file"
    else:
        limit_file, usage_file, inactive = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
    limit = _int(_read(os.path.join(folder, limit_file)))
    usage = _int(_read(os.path.join(folder, usage_file)))
    if limit is None or usage is None or limit >= V1_NO_LIMIT:  # v2's "max" reads as None
        return None
    cache = _int(_fields(_read(os.path.join(folder, "memory.stat"))).get(inactive)) or 0
    return limit - max(0, usage - cache)


def _positive(env: Mapping[str, str], name: str) -> int | None:
    value = _int(env.get(name))
    return value if value is not None and value > 0 else None


def slurm_memory(env: Mapping[str, str]) -> int | None:
    """A SLURM job's memory on this node in bytes (its ``SLURM_MEM_PER_*`` variables, in MiB), None
    outside a job or where it set none (``--mem=0``: the whole node)."""
    cpus = _positive(env, "SLURM_CPUS_ON_NODE") or _positive(env, "SLURM_CPUS_PER_TASK") or 1
    per = [
        (_positive(env, "SLURM_MEM_PER_NODE"), 1),
        (_positive(env, "SLURM_MEM_PER_CPU"), cpus),
        (_positive(env, "SLURM_MEM_PER_GPU"), _positive(env, "SLURM_GPUS_ON_NODE")),
    ]
    sizes = [mib * n * MIB for mib, n in per if mib and n]
    return min(sizes) if sizes else None


def available_memory(
    proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", env: Mapping[str, str] | None = None
) -> int:
    """Bytes this process may still take on its host: the smallest of MemAvailable, each of its
    memory cgroups' room and a SLURM job's allocation less this process's own resident memory
    (module docstring). ``proc``, ``cgroup_root``, ``env``: where to read them (tests)."""
    env = os.environ if env is None else env
    bounds = [meminfo_available(proc)]
    bounds += [_cgroup_room(v, folder) for v, folder in _cgroup_folders(proc, cgroup_root)]
    job = slurm_memory(env)
    if job is not None:
        rss_kib = _int(_fields(_read(os.path.join(proc, "self", "status")), ":").get("VmRSS")) or 0
        bounds.append(job - rss_kib * 1024)
    known = [b for b in bounds if b is not None]
    if not known:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(0, min(known))
