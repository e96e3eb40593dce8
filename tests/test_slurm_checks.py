"""SLURM requests checked against the partition before submission, and pending reasons that never clear:
the parsing and the messages on sinfo's own output formats (the real cluster is in test_slurm.py)."""

import pytest

from lic_kd.slurm import SlurmRequestError, check_request, parse_gpus, parse_time_min, partitions

SINFO = (
    "debug*|2|23000|(null)|1|infinite\n"
    "gpu|64|512000|gpu:a100:4(S:0-1)|3|2-00:00:00\n"
    "gpu|32|256000+|gpu:2|2|2-00:00:00\n"
)
PARTS = partitions(lambda: SINFO)
OK = {
    "partition": None,
    "cpus_per_task": 1,
    "tasks_per_node": 1,
    "mem_gb": 2,
    "gpus_per_node": None,
    "nodes": 1,
    "timeout_min": 60,
}


def test_sinfo_is_read_per_partition_with_its_largest_node():
    debug, gpu = PARTS["debug"], PARTS["gpu"]
    assert debug.is_default and (debug.max_cpus, debug.max_mem_mb, debug.max_gpus, debug.nodes) == (2, 23000, 0, 1)
    assert not gpu.is_default and (gpu.max_cpus, gpu.max_mem_mb, gpu.max_gpus, gpu.nodes) == (64, 512000, 4, 5)
    assert debug.time_limit_min is None and gpu.time_limit_min == 2880


@pytest.mark.parametrize(
    "text,minutes", [("30", 30), ("1:30:00", 90), ("2-00:00:00", 2880), ("10:00", 10), ("infinite", None)]
)
def test_slurm_time_format(text, minutes):
    assert parse_time_min(text) == minutes


def test_gpu_counts_from_gres():
    assert parse_gpus("gpu:a100:4(S:0-1)") == 4 and parse_gpus("gpu:2,tmpdisk:100") == 2 and parse_gpus("(null)") == 0


def test_a_request_that_fits_passes():
    check_request(OK, PARTS)
    check_request(OK | {"partition": "gpu", "cpus_per_task": 16, "gpus_per_node": 4, "mem_gb": 400, "nodes": 2}, PARTS)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"cpus_per_task": 8},
            "hydra.launcher.cpus_per_task=8 x tasks_per_node=1 needs 8 CPUs on a node, "
            "but the largest node of partition debug has 2",
        ),
        ({"mem_gb": 32}, "hydra.launcher.mem_gb=32 but the largest node of partition debug has 22.5 GB"),
        ({"gpus_per_node": 1}, "hydra.launcher.gpus_per_node=1 but the nodes of partition debug have 0 GPUs"),
        ({"nodes": 2}, "hydra.launcher.nodes=2 but partition debug has 1 node(s)"),
        (
            {"partition": "gpu", "timeout_min": 3000},
            "hydra.launcher.timeout_min=3000 but partition gpu allows 2880 minutes",
        ),
        ({"partition": "big"}, "hydra.launcher.partition=big does not exist; partitions: debug, gpu"),
    ],
)
def test_an_impossible_request_names_the_request_and_the_limit(change, message):
    with pytest.raises(SlurmRequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_request(OK | change, PARTS)
