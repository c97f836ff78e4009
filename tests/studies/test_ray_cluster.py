"""Ray across machines, on one machine: a head and a second worker node (``ray start``), a study
through the cluster, the worker node killed mid-run, and a resume (through ``RAY_ADDRESS``) to the
table a serial run gives."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from study_helpers import assert_same_table, small_spec

from circuitkit.studies import StudyInterrupted, load_results, run_study
from circuitkit.studies.store import part_files

SPEC = dict(models=["zoo:tiny-mlp"], tasks=[{"name": "ioi", "params": {"n_prompts": 6}}])  # 12 units


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    # Two nodes on one machine: every port a node opens must differ from the other node's.
    flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [x for flag in flags for x in (flag, str(_free_port()))]


def _start_node(args: list[str], log, env) -> subprocess.Popen:
    return subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args,
                             *_node_ports()], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_node(node: subprocess.Popen) -> None:
    """Kill a node as a lost machine dies: every process under its ``ray start`` (raylet, Ray
    workers, which run in sessions of their own), at once."""
    import psutil

    try:
        procs = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait()


def _wait_for(condition, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.1)


def _slow_chunks() -> None:
    """Ray worker set-up: each chunk takes 0.5 s longer, so the node dies while units are in flight."""
    from circuitkit.studies.runner import UnitRunner

    run_many = UnitRunner.run_many

    def slow(self, units):
        time.sleep(0.5)
        return run_many(self, units)
    UnitRunner.run_many = slow


@pytest.fixture
def cluster(zoo_env, tmp_path, monkeypatch):
    """A head node and a worker node (1 CPU each) on this machine; yields (address, worker process)."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ck-ray-", dir="/tmp")  # sockets live here: keep the path short
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled",
           # find the killed node dead within seconds (the default takes tens of seconds)
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
    nodes = [_start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                         head_log.open("w"), env)]
    try:
        _wait_for(lambda: "Ray runtime started" in head_log.read_text(), "the head node")
        nodes.append(_start_node([f"--address={address}"], worker_log.open("w"), env))
        yield address, nodes[1]
    finally:
        for node in nodes:
            _kill_node(node)


def test_study_on_two_nodes_survives_losing_one(cluster, tmp_path, monkeypatch):
    import ray
    import ray.cloudpickle

    address, worker_node = cluster
    expected = run_study(small_spec(tmp_path / "serial", **SPEC), progress=False)
    spec = small_spec(tmp_path / "out", **SPEC)
    out = tmp_path / "out"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address=address, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _slow_chunks})
    try:
        _wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, "the worker node to join")
        killed = threading.Event()

        def kill_worker_node():  # once some chunks are committed, i.e. mid-run
            _wait_for(lambda: len(part_files(out)) >= 2 if (out / "parts").is_dir() else False, "two parts", 120)
            _kill_node(worker_node)
            killed.set()
        killer = threading.Thread(target=kill_worker_node, daemon=True)
        killer.start()
        with pytest.raises(StudyInterrupted, match=r"^stopped \(a Ray worker died .*\): \d+/12 units saved; "
                                                   r"rerun the same command to resume$") as info:
            run_study(spec, executor="ray", workers=2, progress=False)  # one actor on each node
        assert killed.is_set()
    finally:
        ray.shutdown()
    saved = len(load_results(out))
    assert info.value.saved == saved and 2 <= saved < 12
    # Resume through RAY_ADDRESS on the surviving head node.
    monkeypatch.setenv("RAY_ADDRESS", address)
    results = run_study(spec, executor="ray", workers=1, progress=False)
    assert not ray.is_initialized()
    assert_same_table(results, expected)
