"""The host memory auto_parallel plans with (models/memory.py): the least of the node's MemAvailable,
the process's memory cgroups (v1 and v2, read from a fake /proc and /sys/fs/cgroup) and a SLURM
job's allocation."""

import os

import pytest
import torch

from models import batched
from models.batched import auto_parallel
from models.memory import MIB, available_memory, slurm_memory
from models.train import recipe_for

GIB = 1 << 30


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _proc(tmp_path, cgroup: str, available=64 * GIB, rss_kib=0) -> str:
    proc = str(tmp_path / "proc")
    _write(f"{proc}/meminfo", f"MemTotal:       99999999 kB\nMemAvailable:   {available // 1024} kB\n")
    _write(f"{proc}/self/cgroup", cgroup)
    _write(f"{proc}/self/status", f"Name:\tpython\nVmRSS:\t  {rss_kib} kB\nThreads:\t1\n")
    return proc


def test_cgroup_v2_limit_of_the_job_above_the_task(tmp_path):
    """SLURM's cgroup v2 layout: the limit sits on job_7, the task's own cgroup says "max"; the page
    cache it can reclaim (inactive_file) does not count as used."""
    job = "system.slice/slurmstepd.scope/job_7"
    proc = _proc(tmp_path, f"0::/{job}/step_0/user/task_0\n")
    root = str(tmp_path / "cgroup")
    _write(f"{root}/cgroup.controllers", "cpu memory\n")
    _write(f"{root}/{job}/memory.max", f"{8 * GIB}\n")
    _write(f"{root}/{job}/memory.current", f"{3 * GIB}\n")
    _write(f"{root}/{job}/memory.stat", f"anon {2 * GIB}\ninactive_file {GIB}\nactive_file 0\n")
    _write(f"{root}/{job}/step_0/user/task_0/memory.max", "max\n")
    _write(f"{root}/{job}/step_0/user/task_0/memory.current", f"{GIB}\n")
    assert available_memory(proc, root, env={}) == 6 * GIB
    _write(f"{root}/{job}/step_0/memory.max", f"{5 * GIB}\n")  # a tighter limit below wins
    _write(f"{root}/{job}/step_0/memory.current", f"{4 * GIB}\n")
    assert available_memory(proc, root, env={}) == GIB
    # No limit anywhere: the node's MemAvailable.
    _write(f"{root}/{job}/memory.max", "max\n")
    _write(f"{root}/{job}/step_0/memory.max", "max\n")
    assert available_memory(proc, root, env={}) == 64 * GIB
    # The node's MemAvailable when it is the least.
    assert available_memory(_proc(tmp_path, f"0::/{job}/step_0\n", available=GIB // 2), root, env={}) == GIB // 2


def test_cgroup_v1_memory_hierarchy(tmp_path):
    """cgroup v1: the memory controller's own hierarchy; 2**63 rounded down to a page means none;
    a container that shows its own cgroup as the root (the named folder absent) has its limit there."""
    proc = _proc(tmp_path, "12:cpu,cpuacct:/slurm/uid_0/job_7\n4:memory:/slurm/uid_0/job_7/step_0\n0::/\n")
    root = str(tmp_path / "cgroup")
    unlimited = "9223372036854771712\n"
    _write(f"{root}/memory/memory.limit_in_bytes", unlimited)
    _write(f"{root}/memory/memory.usage_in_bytes", f"{40 * GIB}\n")
    _write(f"{root}/memory/slurm/uid_0/job_7/memory.limit_in_bytes", f"{4 * GIB}\n")
    _write(f"{root}/memory/slurm/uid_0/job_7/memory.usage_in_bytes", f"{GIB}\n")
    _write(f"{root}/memory/slurm/uid_0/job_7/memory.stat", f"cache 0\ntotal_inactive_file {GIB // 4}\n")
    _write(f"{root}/memory/slurm/uid_0/job_7/step_0/memory.limit_in_bytes", unlimited)
    _write(f"{root}/memory/slurm/uid_0/job_7/step_0/memory.usage_in_bytes", f"{GIB}\n")
    _write(f"{root}/cpu,cpuacct/slurm/uid_0/job_7/memory.limit_in_bytes", "1\n")  # not the memory controller
    assert available_memory(proc, root, env={}) == 4 * GIB - (GIB - GIB // 4)
    container = _proc(tmp_path, "4:memory:/docker/0123abcd\n")
    _write(f"{root}/memory/memory.limit_in_bytes", f"{2 * GIB}\n")
    assert available_memory(container, root, env={}) == 0  # over its limit already
    _write(f"{root}/memory/memory.usage_in_bytes", f"{GIB // 2}\n")
    assert available_memory(container, root, env={}) == 2 * GIB - GIB // 2


def test_slurm_allocation(tmp_path):
    """SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU x the CPUs (or SLURM_MEM_PER_GPU x the GPUs), in
    MiB, less what the process holds already; none set or 0 (--mem=0: the whole node) bounds nothing."""
    assert slurm_memory({}) is None and slurm_memory({"SLURM_MEM_PER_NODE": "0"}) is None
    assert slurm_memory({"SLURM_MEM_PER_NODE": "2048"}) == 2048 * MIB
    assert slurm_memory({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "3", "SLURM_CPUS_PER_TASK": "2"}) == (
        3000 * MIB
    )
    assert slurm_memory({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "2"}) == 2000 * MIB
    assert slurm_memory({"SLURM_MEM_PER_CPU": "1000"}) == 1000 * MIB
    assert slurm_memory({"SLURM_MEM_PER_GPU": "4096", "SLURM_GPUS_ON_NODE": "2"}) == 8192 * MIB
    assert slurm_memory({"SLURM_MEM_PER_NODE": "12G"}) is None  # SLURM writes MiB as a plain number
    proc = _proc(tmp_path, "0::/\n", rss_kib=100 * 1024)
    root = str(tmp_path / "no-cgroup")
    assert available_memory(proc, root, env={"SLURM_MEM_PER_NODE": "2048"}) == 1948 * MIB
    assert available_memory(proc, root, env={"SLURM_MEM_PER_NODE": "50"}) == 0
    assert available_memory(proc, root, env={"SLURM_MEM_PER_NODE": str(1 << 30)}) == 64 * GIB
    assert available_memory(str(tmp_path / "nothing"), root, env={}) > 0  # sysconf, where /proc is silent


def test_auto_parallel_plans_within_the_slurm_job(monkeypatch):
    """The CPU's K comes from the job's allocation, not the node's memory: a job given 8 MiB more
    than this process holds trains one purchase100 model at a time, where the node has room for
    MAX_PARALLEL."""
    recipe = recipe_for("purchase100", "inf")
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU"):
        monkeypatch.delenv(var, raising=False)
    if batched.free_memory(torch.device("cpu")) < 4 * GIB:
        pytest.skip("too little free memory here to tell the node's K from the job's")
    assert auto_parallel("purchase100", recipe, "cpu") == batched.MAX_PARALLEL["cpu"]
    with open("/proc/self/status") as f:
        rss_mib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) // 1024
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(rss_mib + 8))
    assert batched.free_memory(torch.device("cpu")) <= 8 * MIB
    assert auto_parallel("purchase100", recipe, "cpu") == 1
