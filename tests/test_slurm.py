"""The SLURM job scripts (scripts/slurm/): parsed and dry-run in the default suite; run for real on a
single-node SLURM cluster started on this machine by the slow test (Debian's slurm-wlm and munge,
installed with apt-get when missing; no cgroups, no accounting, state under a temporary folder)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import run_lira_mia
import save_preds
import train_shadows
from challenges import cache, layout
from tests.conftest import ROOT

SLURM = os.path.join(ROOT, "scripts", "slurm")
SCRIPTS = sorted(os.path.join(SLURM, name) for name in os.listdir(SLURM))
TRACK, SCENARIO = "purchase100", "purchase100_inf"


def _bash(script, env, *args):
    """``bash script args`` with ``env`` added to a clean copy of the environment (no SLURM_*, no
    thread counts)."""
    keep = [k for k in os.environ if not k.startswith(("SLURM_", "SBATCH_")) and not k.endswith("_NUM_THREADS")]
    base = {k: os.environ[k] for k in keep}
    return subprocess.run(
        ["bash", script, *args], env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


# ---------------------------------------------------------------------------------------------
# Default suite: the scripts parse, and a dry run shows what they would run
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert os.access(script, os.X_OK)


def test_submit_dry_run_chains_the_three_jobs():
    env = {"DRY_RUN": "1", "CHALLENGE": TRACK, "SCENARIO": SCENARIO, "N": "8", "TASKS": "4", "PRED_TASKS": "3"}
    r = _bash(os.path.join(SLURM, "submit.sh"), {**env, "GPUS": "2", "PARTITION": "gpu", "SBATCH_ARGS": "--time=1:00"})
    assert r.returncode == 0 and r.stdout.split() == ["<train>", "<preds>", "<attack>"], r.stderr
    train, preds, attack = r.stderr.strip().splitlines()
    assert "--array=0-3" in train and "SHARDS=4" in train and train.endswith("train_shadows.sbatch")
    assert "--array=0-2" in preds and "SHARDS=3" in preds and "--dependency=afterok:<train>" in preds
    assert "--dependency=afterok:<train>:<preds>" in attack and attack.endswith("attack.sbatch")
    for line in (train, preds, attack):
        assert "--partition=gpu" in line and "--time=1:00" in line and f"--chdir={ROOT}" in line
        exports = [o for o in line.split() if o.startswith("--export=")]  # a site may set SBATCH_EXPORT=NONE
        assert len(exports) == 1 and exports[0].split(",")[0] == "--export=ALL", line
    assert "--gres=gpu:2" in train and "--gres=gpu:2" in preds and "--gres" not in attack
    cpu = _bash(os.path.join(SLURM, "submit.sh"), env)
    assert cpu.returncode == 0 and "--gres" not in cpu.stderr and "--partition" not in cpu.stderr
    bad = _bash(os.path.join(SLURM, "submit.sh"), {**env, "TASKS": "0"})
    assert bad.returncode == 2 and "TASKS" in bad.stderr
    missing = _bash(os.path.join(SLURM, "submit.sh"), {"DRY_RUN": "1", "CHALLENGE": TRACK})
    assert missing.returncode != 0 and "SCENARIO" in missing.stderr


FAKE_SBATCH = """#!/bin/bash
# sbatch --parsable on a multi-cluster site: "<id>;<cluster>"; logs its arguments, one call a line.
echo "$*" >> "$SBATCH_LOG"
echo "$((100 + $(wc -l < "$SBATCH_LOG")));cluster-a"
"""


def test_submit_takes_the_job_id_before_the_cluster_name(tmp_path):
    """sbatch --parsable prints "id;cluster" where several clusters are federated: the dependencies
    and the printed ids use the id alone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SBATCH_LOG": str(log),
        "SBATCH_EXPORT": "NONE",
        "LOG_DIR": str(tmp_path / "logs"),
        "CHALLENGE": TRACK,
        "SCENARIO": SCENARIO,
        "N": "4",
        "TASKS": "2",
    }
    r = _bash(os.path.join(SLURM, "submit.sh"), env)
    assert r.returncode == 0 and r.stdout.split() == ["101", "102", "103"], r.stderr
    train, preds, attack = log.read_text().splitlines()
    assert "--dependency=afterok:101 " in preds and "--dependency=afterok:101:102 " in attack
    assert all(" --export=ALL" in line for line in (train, preds, attack))
    (bin_dir / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: Batch job submission failed' >&2\nexit 1\n")
    failed = _bash(os.path.join(SLURM, "submit.sh"), env)
    assert failed.returncode != 0 and failed.stdout == ""
    assert "submission failed" in failed.stderr and "for the train job, not a job id" in failed.stderr


FAKE_PYTHON = """#!/bin/bash
# The interpreter of a dry run: prints the thread variables and the command line.
echo "OMP=${OMP_NUM_THREADS:-} MKL=${MKL_NUM_THREADS:-} OPENBLAS=${OPENBLAS_NUM_THREADS:-} $*"
"""


def test_job_scripts_take_threads_and_the_scenario_from_the_job(tmp_path):
    """SLURM_CPUS_PER_TASK (sbatch --cpus-per-task) becomes --threads of training and caching and
    the BLAS threads of the attack; SCENARIO limits caching and attack to that scenario."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    task = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "PYTHON": str(python), "CHALLENGE": TRACK}
    job = {**task, "SLURM_CPUS_PER_TASK": "6", "SCENARIO": SCENARIO, "N": "4"}
    train = _bash(os.path.join(SLURM, "train_shadows.sbatch"), job).stdout
    assert "--shard 0/2 --threads 6" in train
    preds = _bash(os.path.join(SLURM, "save_preds.sbatch"), {**job, "PREDS_ARGS": "--threads 2"}).stdout
    assert f"save_preds.py --challenge {TRACK} --scenario {SCENARIO} --data-dir" in preds
    assert preds.strip().endswith("--threads 6 --threads 2")  # the user's own flag comes last and wins
    attack = _bash(os.path.join(SLURM, "attack.sbatch"), {**job, "MKL_NUM_THREADS": "3"}).stdout.splitlines()[-1]
    assert attack.startswith("OMP=6 MKL=3 OPENBLAS=6 run_lira_mia.py")
    assert f"run_lira_mia.py --challenge {TRACK} --scenario {SCENARIO} --data-dir" in attack
    track = {**task, "N": "4", "SCENARIO": SCENARIO}
    assert "--threads" not in _bash(os.path.join(SLURM, "train_shadows.sbatch"), track).stdout
    preds = _bash(os.path.join(SLURM, "save_preds.sbatch"), task).stdout
    attack = _bash(os.path.join(SLURM, "attack.sbatch"), task).stdout
    assert "--scenario" not in preds + attack and "--threads" not in preds and "OMP= MKL= OPENBLAS= " in attack


def test_job_scripts_dry_run(tmp_path):
    """Each job script run outside SLURM with PYTHON=echo: the command line a task would run."""
    task = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "PYTHON": "echo", "CHALLENGE": TRACK}
    train = _bash(os.path.join(SLURM, "train_shadows.sbatch"), {**task, "SCENARIO": SCENARIO, "N": "4"})
    assert train.returncode == 0, train.stderr
    assert f"train_shadows.py --challenge {TRACK} --scenario {SCENARIO} --n 4 --design balanced" in train.stdout
    assert "--shard 1/2" in train.stdout
    preds = _bash(os.path.join(SLURM, "save_preds.sbatch"), {**task, "SHARDS": "5", "PREDS_ARGS": "--augment"})
    assert preds.returncode == 0 and "save_preds.py --challenge purchase100" in preds.stdout
    assert "--shard 1/5" in preds.stdout and preds.stdout.strip().endswith("--augment")
    attack = _bash(os.path.join(SLURM, "attack.sbatch"), {"PYTHON": "echo", "CHALLENGE": TRACK})
    assert attack.returncode == 0 and attack.stdout.strip().endswith("--global_variance --evaluate")
    not_array = _bash(os.path.join(SLURM, "save_preds.sbatch"), {"PYTHON": "echo", "CHALLENGE": TRACK})
    assert not_array.returncode != 0 and "--array" in not_array.stderr
    no_n = _bash(os.path.join(SLURM, "train_shadows.sbatch"), {**task, "SCENARIO": SCENARIO})
    assert no_n.returncode != 0 and "set N" in no_n.stderr


# ---------------------------------------------------------------------------------------------
# Slow: a real single-node SLURM cluster
# ---------------------------------------------------------------------------------------------


DAEMONS = ("munged", "slurmctld", "slurmd")


def _which(name: str):
    """A program's path; daemons live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _install_slurm() -> None:
    """slurm-wlm and munge from apt when missing; skip only where apt-get (or root) is unavailable."""
    if all(_which(b) for b in DAEMONS + ("sbatch",)):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is unavailable to install slurm-wlm and munge")
    if os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing slurm-wlm and munge with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {r.stdout[-800:]} {r.stderr[-800:]}")
    missing = [b for b in DAEMONS + ("sbatch",) if not _which(b)]
    if missing:
        pytest.fail(f"apt-get installed slurm-wlm and munge, but {', '.join(missing)} is not on PATH or in /usr/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=mico-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """munged, slurmctld and slurmd in the foreground, configured under ``root``."""

    def __init__(self, root: str):
        self.root, self.procs = root, []
        for sub in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(root, sub), mode=0o700)
        with open(os.path.join(root, "munge", "munge.key"), "wb") as f:
            f.write(os.urandom(128))
        os.chmod(os.path.join(root, "munge", "munge.key"), 0o400)
        self.conf = os.path.join(root, "slurm.conf")
        host = socket.gethostname().split(".")[0]
        with open(self.conf, "w") as f:
            f.write(SLURM_CONF.format(host=host, root=root, ctld_port=_free_port(), d_port=_free_port()))
        self.env = {**os.environ, "SLURM_CONF": self.conf}
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_")) and k != "SLURM_CONF"]:
            del self.env[var]

    def start(self) -> None:
        m = os.path.join(self.root, "munge")
        self._spawn(
            "munged",
            [_which("munged"), "-F", "-f", f"--socket={m}/socket", f"--key-file={m}/munge.key", f"--pid-file={m}/pid"]
            + [f"--seed-file={m}/seed", f"--log-file={self.root}/log/munged.log"],
        )
        self._wait(lambda: os.path.exists(f"{m}/socket"), "munged's socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_which("slurmd"), "-D"])
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).strip() == "idle", "an idle node")

    def _spawn(self, name, argv) -> None:
        log = open(os.path.join(self.root, "log", f"{name}.out"), "w")  # noqa: SIM115 - lives with the daemon
        self.procs.append((name, subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)))

    def _wait(self, cond, what, timeout=60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            dead = [name for name, p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(f"SLURM cluster: no {what} ({', '.join(dead) or 'timeout'}); {self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        out = []
        for name in sorted(os.listdir(os.path.join(self.root, "log"))):
            with open(os.path.join(self.root, "log", name), errors="replace") as f:
                out.append(f"{name}: {' | '.join(f.read().splitlines()[-6:])}")
        return " ;; ".join(out)

    def run(self, *argv, check=True, env=None) -> str:
        r = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(argv)}: rc {r.returncode}: {r.stderr.strip()}; {self.logs()}")
        return r.stdout

    def state(self, job: str) -> dict:
        """{job id (array tasks as <id>_<i>): state} of every job or task of ``job``; asks again
        while slurmctld does not answer (a busy machine)."""
        deadline = time.monotonic() + 120
        while True:
            argv = ["squeue", "-h", "-j", job, "-t", "all", "-o", "%i %T"]
            r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                return dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if time.monotonic() > deadline:
                pytest.fail(f"squeue -j {job}: rc {r.returncode}: {r.stderr.strip()}; {self.logs()}")
            time.sleep(1.0)

    def wait_for(self, task: str, state: str, timeout=120.0) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.state(task.split("_")[0]).get(task)) != state:
            if time.monotonic() > deadline:
                pytest.fail(f"{task} is {now}, not {state}, after {timeout:.0f} s; {self.logs()}")
            time.sleep(0.2)

    def wait_done(self, jobs, timeout=600.0) -> None:
        """Until every job of ``jobs`` has ended; fails unless all COMPLETED."""
        deadline = time.monotonic() + timeout
        while True:
            per_job = [self.state(j) for j in jobs]
            states = {k: v for s in per_job for k, v in s.items()}
            ended = all(
                v not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") for v in states.values()
            )
            if all(per_job) and ended:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"SLURM jobs still not done after {timeout:.0f} s: {states}")
            time.sleep(1.0)
        assert all(v == "COMPLETED" for v in states.values()), f"{states}; {self.logs()}"

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            p.terminate()
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _install_slurm()
    c = Cluster(str(tmp_path_factory.mktemp("slurm")))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _job_env(data_dir, cache_dir, tmp_path, **extra) -> dict:
    """What the job scripts read (the challenge, paths, this interpreter), for sbatch --export=ALL."""
    return {
        "CHALLENGE": TRACK,
        "SCENARIO": SCENARIO,
        "N": "4",
        "DATA_DIR": data_dir,
        "CACHE_DIR": cache_dir,
        "REPORT_DIR": str(tmp_path / "report"),
        "LOG_DIR": str(tmp_path / "logs"),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "TRAIN_ARGS": "--epochs 1 --parallel 1",
        "ATTACK_ARGS": "--global_variance --evaluate",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }


def _single_machine(data_dir, cache_dir, report_dir) -> None:
    """The same three steps in one process, unsharded, on one thread as the jobs are (bits of
    float32 sums depend on how many threads share them; the caller holds single_thread, which gives
    this process its thread count back)."""
    common = ["--challenge", TRACK, "--data-dir", data_dir]
    train = ["--scenario", SCENARIO, "--n", "4", "--design", "balanced", "--epochs", "1", "--parallel", "1"]
    assert train_shadows.main([*common, *train, "--device", "cpu", "--threads", "1"]) == 0
    assert save_preds.main([*common, "--cache-dir", cache_dir, "--device", "cpu", "--threads", "1"]) == 0
    attack = ["--cache-dir", cache_dir, "--report-dir", report_dir, "--global_variance", "--evaluate"]
    assert run_lira_mia.main([*common, *attack]) == 0


def _state(data_dir, cache_dir, report_dir) -> dict:
    """Everything the pipeline leaves: model bytes, cache arrays (the stamps' keys aside: another
    tree), predictions and scores."""
    out = {}
    for md in layout.models(data_dir, TRACK, SCENARIO):
        rel = os.path.relpath(md.path, data_dir)
        with open(md.model_file, "rb") as f:
            out[rel, "model.pt"] = f.read()
        entry = cache.read(cache.cache_file(cache_dir, md))
        for k, v in entry.items():
            if k not in cache.KEY:
                out[rel, "cache", k] = v
        if md.phase in ("dev", "final"):
            with open(md.prediction_file) as f:
                out[rel, "prediction.csv"] = f.read()
    with open(os.path.join(report_dir, TRACK, "scores.json")) as f:
        out["scores.json"] = f.read()
    return out


def _assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got, key=str) == sorted(want, key=str)
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[k], v, err_msg=str(k))
        else:
            assert got[k] == v, k


def _leftovers(data_dir, cache_dir) -> list:
    """Hidden temporary files or folders a killed writer left (locks aside)."""
    found = []
    for top in (data_dir, cache_dir):
        for dirpath, dirs, files in os.walk(top):
            found += [
                os.path.join(dirpath, n) for n in dirs + files if n.startswith(".model_") and not n.endswith(".lock")
            ]
    return found


HELD_SAVEZ = """\
#!/bin/bash
# The interpreter, where in array task 1's first attempt a cache file's second write stops for
# good once its temporary copy is written, before it is renamed: a task killed then is killed
# mid-write, whatever the machine's load.
exec {python} -c '
import os, runpy, sys, time
import numpy as np
savez, calls = np.savez, []
def held(*a, **k):
    savez(*a, **k)
    calls.append(1)
    first = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
    if first and os.environ.get("SLURM_ARRAY_TASK_ID") == "1" and len(calls) == 2:
        time.sleep(3600)
np.savez = held
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
' "$@"
"""


@pytest.mark.slow
def test_slurm_pipeline_equals_a_single_machine_run(cluster, small_challenge, tmp_path, single_thread):
    """submit.sh on the cluster (a 2-task training array, a 2-task caching array, the dependent
    attack) leaves what one unsharded run leaves; then a caching task killed mid-write (scancel) and
    requeued ends as an uninterrupted run."""
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    for d in (ref, run):
        shutil.copytree(small_challenge, os.path.join(d, "data"))
    _single_machine(f"{ref}/data", f"{ref}/cache", f"{ref}/report")
    want = _state(f"{ref}/data", f"{ref}/cache", f"{ref}/report")

    env = _job_env(f"{run}/data", f"{run}/cache", tmp_path, TASKS="2")
    jobs = cluster.run(os.path.join(SLURM, "submit.sh"), env={**env, "REPORT_DIR": f"{run}/report"}).split()
    assert len(jobs) == 3
    cluster.wait_done(jobs)
    assert set(cluster.state(jobs[0])) == {f"{jobs[0]}_0", f"{jobs[0]}_1"}
    assert set(cluster.state(jobs[1])) == {f"{jobs[1]}_0", f"{jobs[1]}_1"}
    _assert_same_state(_state(f"{run}/data", f"{run}/cache", f"{run}/report"), want)

    # A caching task killed mid-write and requeued, on a fresh cache of the trained tree.
    killed_cache = str(tmp_path / "killed_cache")
    wrapper = tmp_path / "held_python"
    wrapper.write_text(HELD_SAVEZ.format(python=sys.executable))
    wrapper.chmod(0o755)
    env = _job_env(f"{run}/data", killed_cache, tmp_path, PYTHON=str(wrapper))
    out = cluster.run(
        "sbatch", "--parsable", f"--chdir={ROOT}", "--array=0-1", f"--output={tmp_path}/logs/k_%A_%a.out",
        os.path.join(SLURM, "save_preds.sbatch"), env=env,
    )  # fmt: skip
    job = out.strip()
    mds = layout.models(f"{run}/data", TRACK, SCENARIO)
    mine = [cache.cache_file(killed_cache, md) for md in mds[1::2]]  # shard 1/2

    def mid_write():
        """Task 1 has written its first file and is writing a later one."""
        writing = [
            n
            for d, n in map(os.path.split, mine[1:])
            if os.path.isdir(d)
            for t in os.listdir(d)
            if t.startswith(f".{n}.")
        ]
        return os.path.exists(mine[0]) and bool(writing)

    deadline = time.monotonic() + 300
    while not mid_write():
        assert time.monotonic() < deadline, f"task 1 never got part-way: {cluster.state(job)}; {cluster.logs()}"
        time.sleep(0.1)
    cluster.run("scancel", f"{job}_1")
    cluster.wait_for(f"{job}_1", "CANCELLED")
    done = [os.path.exists(p) for p in mine]
    assert done == [True] + [False] * (len(mine) - 1) and _leftovers(f"{run}/data", killed_cache)  # mid-write
    # slurmd keeps a killed job's credential revoked, compared at one-second resolution: a task
    # requeued and started within that second is refused ("Job credential revoked"). Wait it out.
    time.sleep(3.0)
    cluster.run("scontrol", "requeue", f"{job}_1")
    cluster.wait_for(f"{job}_1", "PENDING")
    cluster.run("scontrol", "update", f"jobid={job}_1", "StartTime=now")  # requeued jobs wait ~2 min otherwise
    cluster.wait_done([job])
    assert _leftovers(f"{run}/data", killed_cache) == []
    got = {k: v for k, v in _state(f"{run}/data", killed_cache, f"{run}/report").items() if "cache" in k}
    _assert_same_state(got, {k: v for k, v in want.items() if "cache" in k})
