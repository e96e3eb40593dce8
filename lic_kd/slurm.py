"""SLURM requests checked before they are submitted, and jobs watched while the sweep waits: a request the
partition can never satisfy is an error that names the request and the limit, instead of a silent hang.

Used by the `launcher=slurm` preset through `hydra_plugins/lic_kd_launcher` (Hydra's submitit launcher,
extended; not forked)."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lic_kd.errors import UserError

log = logging.getLogger(__name__)

# Pending reasons that never clear by waiting (squeue's %r): the request exceeds what the partition, the
# account or the QOS allows. Anything else (Priority, Resources, JobArrayTaskLimit, BeginTime, ...) waits.
NEVER_CLEARS = {
    "PartitionConfig": "the request exceeds what the partition's configuration allows",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a time limit above the partition's",
    "ReqNodeNotAvail": "the requested nodes are not available",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows per job",
    "QOSMaxMemoryPerJob": "more memory than the QOS allows per job",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows per job",
    "QOSMaxWallDurationPerJobLimit": "a time limit above the QOS's",
    "AssocMaxWallDurationPerJobLimit": "a time limit above the association's",
    "BadConstraints": "the constraints cannot be met",
    "Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_in_higher_priority_partitions": (
        "the nodes are down or drained"
    ),
}


class SlurmRequestError(UserError):
    """A SLURM request that cannot run: the message names the request and the limit."""


@dataclass
class Partition:
    name: str
    is_default: bool
    max_cpus: int
    max_mem_mb: int
    max_gpus: int
    nodes: int
    time_limit_min: float | None  # None: infinite


def _run(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmRequestError(f"cannot ask SLURM ({' '.join(cmd)}): {err}") from None
    if proc.returncode != 0:
        raise SlurmRequestError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def parse_time_min(text: str) -> float | None:
    """SLURM's time format ([days-]hours:minutes:seconds, minutes, ...) in minutes; None for infinite."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        h, m, s = (parts + [0.0, 0.0])[:3]
    else:  # minutes, minutes:seconds, or hours:minutes:seconds
        h, m, s = (0.0, parts[0], 0.0) if len(parts) == 1 else (0.0, *parts) if len(parts) == 2 else tuple(parts)
    return (float(days or 0) * 24 + h) * 60 + m + s / 60


def parse_gpus(gres: str) -> int:
    """GPUs per node from sinfo's GRES column, e.g. 'gpu:4', 'gpu:a100:8(S:0-1)', '(null)'."""
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if match:
            total += int(match.group(1))
    return total


def partitions(sinfo: Callable[[], str] | None = None) -> dict[str, Partition]:
    """Every partition with the largest node's CPUs, memory and GPUs (`sinfo -h -o '%P|%c|%m|%G|%D|%l'`)."""
    text = sinfo() if sinfo else _run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%D|%l"])
    found: dict[str, Partition] = {}
    for line in text.strip().splitlines():
        name, cpus, mem, gres, nodes, limit = line.split("|")
        key = name.rstrip("*")
        p = found.setdefault(key, Partition(key, name.endswith("*"), 0, 0, 0, 0, parse_time_min(limit)))
        p.max_cpus = max(p.max_cpus, int(cpus.rstrip("+")))
        p.max_mem_mb = max(p.max_mem_mb, int(mem.rstrip("+")))
        p.max_gpus = max(p.max_gpus, parse_gpus(gres))
        p.nodes += int(nodes)
    return found


def check_request(params: dict[str, Any], available: dict[str, Partition]) -> None:
    """Raise SlurmRequestError when the launcher's request can never run on its partition."""
    name = params.get("partition")
    if name is None:
        default = [p for p in available.values() if p.is_default]
        if not default:
            raise SlurmRequestError(
                "no partition named and the cluster has no default one: set hydra.launcher.partition "
                f"(partitions: {', '.join(available)})"
            )
        part = default[0]
    elif name not in available:
        raise SlurmRequestError(f"hydra.launcher.partition={name} does not exist; partitions: {', '.join(available)}")
    else:
        part = available[name]
    where = f"partition {part.name}"
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    if cpus > part.max_cpus:
        raise SlurmRequestError(
            f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} x tasks_per_node="
            f"{params.get('tasks_per_node') or 1} needs {cpus} CPUs on a node, but the largest node of {where} "
            f"has {part.max_cpus}: set hydra.launcher.cpus_per_task"
        )
    mem_gb = params.get("mem_gb")
    if mem_gb and mem_gb * 1024 > part.max_mem_mb:
        raise SlurmRequestError(
            f"hydra.launcher.mem_gb={mem_gb} but the largest node of {where} has "
            f"{part.max_mem_mb / 1024:.1f} GB: set hydra.launcher.mem_gb"
        )
    gpus = params.get("gpus_per_node") or 0
    if gpus > part.max_gpus:
        raise SlurmRequestError(
            f"hydra.launcher.gpus_per_node={gpus} but the nodes of {where} have {part.max_gpus} GPUs: "
            "set hydra.launcher.gpus_per_node (or a GPU partition)"
        )
    nodes = params.get("nodes") or 1
    if nodes > part.nodes:
        raise SlurmRequestError(
            f"hydra.launcher.nodes={nodes} but {where} has {part.nodes} node(s): set hydra.launcher.nodes"
        )
    timeout = params.get("timeout_min")
    if timeout and part.time_limit_min is not None and timeout > part.time_limit_min:
        raise SlurmRequestError(
            f"hydra.launcher.timeout_min={timeout} but {where} allows {part.time_limit_min:g} minutes: "
            "set hydra.launcher.timeout_min (a requeued job resumes from last.ckpt)"
        )


def check_processes(trainer: dict[str, Any], params: dict[str, Any]) -> None:
    """One SLURM task per training process: Lightning's DDP takes each task as one of trainer.devices x
    trainer.num_nodes processes, so the two counts must agree (else the tasks train the same run side by side,
    or DDP waits for processes that never start)."""
    devices, num_nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if not isinstance(devices, int):  # "auto" or a list of ids: Lightning checks them against SLURM itself
        return
    tasks, nodes = params.get("tasks_per_node") or 1, params.get("nodes") or 1
    if (devices, num_nodes) != (tasks, nodes):
        raise SlurmRequestError(
            f"trainer.devices={devices} x trainer.num_nodes={num_nodes} training processes, but the "
            f"SLURM job starts tasks_per_node={tasks} x nodes={nodes} tasks: set hydra.launcher.tasks_per_node="
            f"{devices} hydra.launcher.nodes={num_nodes} (one task per device)"
        )


def job_states(job_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of each job still in the queue (array tasks one by one)."""
    if not job_ids:
        return []
    out = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    return [tuple(line.split("|", 2)) for line in out.strip().splitlines() if line.count("|") == 2]  # type: ignore[misc]


class JobWatcher(threading.Thread):
    """While a sweep waits on its jobs: one line of their states every `every_s` seconds, and a job pending
    for a reason that never clears cancels the sweep (scancel), recording why for the launcher's error."""

    def __init__(self, submitit_dir: Path, n_jobs: int, every_s: float = 60.0, poll_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="lic_kd-slurm-watch")
        self.submitit_dir, self.n_jobs, self.every_s, self.poll_s = submitit_dir, n_jobs, every_s, poll_s
        self.stop_event = threading.Event()
        self.fatal: str | None = None

    def job_ids(self) -> list[str]:
        if not self.submitit_dir.is_dir():
            return []
        return sorted({p.name.split("_")[0] for p in self.submitit_dir.iterdir() if p.name.split("_")[0].isdigit()})

    def run(self) -> None:
        last_line = 0.0
        while not self.stop_event.wait(self.poll_s):
            ids = self.job_ids()
            try:
                states = job_states(ids)
            except SlurmRequestError as err:
                log.warning("cannot read the jobs' states: %s", err)
                continue
            stuck = [(j, r) for j, s, r in states if s == "PENDING" and r.split(",")[0].strip("()") in NEVER_CLEARS]
            if stuck:
                job, reason = stuck[0]
                key = reason.split(",")[0].strip("()")
                self.fatal = (
                    f"SLURM job {job} is pending with reason {key}: {NEVER_CLEARS[key]}; it would wait forever, "
                    "so the sweep is cancelled: change the hydra.launcher request"
                )
                log.error(self.fatal)
                subprocess.run(["scancel", *ids], capture_output=True)
                return
            if time.monotonic() - last_line >= self.every_s and states:
                counts: dict[str, int] = {}
                for _, state, reason in states:
                    label = state.lower() + (
                        f" ({reason})" if state == "PENDING" and reason not in ("", "None") else ""
                    )
                    counts[label] = counts.get(label, 0) + 1
                if self.n_jobs > len(states):
                    counts["finished (its results.json says how)"] = self.n_jobs - len(states)
                log.info(
                    "SLURM jobs %s: %s", ",".join(ids), ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
                )
                last_line = time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()
