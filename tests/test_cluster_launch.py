"""Cluster launch without a cluster: the env-to-`jax.distributed.initialize` mapping (Slurm,
torchrun-style, Cloud TPU, the config), the TPU slice launcher's commands, the Slurm batch script
and the Kubernetes manifest."""

import os
import shlex
import subprocess
import sys

import ml_collections
import pytest

from codevision_jax import distributed_env as de
from launch import cluster, tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(ROOT, "launch", "slurm", "train.sbatch")
MANIFEST = os.path.join(ROOT, "launch", "k8s", "train-job.yaml")


def dist(num_processes=1, coordinator_address="", process_id=-1):
  """A config's `distributed` section."""
  return ml_collections.ConfigDict(
    {"num_processes": num_processes, "coordinator_address": coordinator_address, "process_id": process_id}
  )


def slurm(ntasks, procid, localid=0, nodelist="node[01-04,07]", **extra):
  """The variables srun gives one task."""
  env = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": str(ntasks),
    "SLURM_PROCID": str(procid),
    "SLURM_LOCALID": str(localid),
    "SLURM_STEP_NODELIST": nodelist,
  }
  return {**env, **extra}


# --- Slurm ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "nodelist, hosts",
  [
    ("node01", ["node01"]),
    ("node01,gpu7", ["node01", "gpu7"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("gpu-[008-010],cpu[3]", ["gpu-008", "gpu-009", "gpu-010", "cpu3"]),
    ("a[1-2],b[5,9-10]", ["a1", "a2", "b5", "b9", "b10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
  ],
)
def test_nodelist_expansion(nodelist, hosts):
  assert de.expand_nodelist(nodelist) == hosts


def test_bad_nodelists_are_named():
  for bad in ("node[01-04", "node[a-b]", ""):
    with pytest.raises(de.DistributedEnvError, match="nodelist"):
      de.expand_nodelist(bad)


def test_slurm_one_process_per_node():
  env = slurm(4, 2, nodelist="node[01-04,07]", SLURM_STEP_NUM_NODES="4")
  port = 4242 % 4096 + 61440  # As JAX's SlurmCluster: distinct for jobs sharing a node.
  assert de.initialize_args(env, dist()) == {
    "coordinator_address": f"node01:{port}",
    "num_processes": 4,
    "process_id": 2,
    "cluster_detection_method": "deactivate",
  }  # Else JAX keeps only GPU SLURM_LOCALID.


def test_slurm_one_process_per_gpu_and_port():
  env = slurm(16, 11, localid=3, nodelist="gpu[3-4]", SLURM_STEP_TASKS_PER_NODE="8(x2)", CVJ_COORDINATOR_PORT="2222")
  args = de.initialize_args(env, dist())
  assert args["coordinator_address"] == "gpu3:2222"
  assert (args["num_processes"], args["process_id"], args["local_device_ids"]) == (16, 11, [3])
  # Without a tasks-per-node variable: SLURM_NTASKS over the node count.
  del env["SLURM_STEP_TASKS_PER_NODE"]
  assert de.initialize_args({**env, "SLURM_NNODES": "2"}, dist())["local_device_ids"] == [3]
  # Slurm bound one GPU to the task (--gpus-per-task=1): it is local device 0, not 3.
  bound = de.initialize_args({**env, "SLURM_NNODES": "2", "CUDA_VISIBLE_DEVICES": "3"}, dist())
  assert "local_device_ids" not in bound


def test_slurm_job_nodelist_fallback_and_single_task():
  env = slurm(2, 1)
  del env["SLURM_STEP_NODELIST"]
  env["SLURM_JOB_NODELIST"] = "h[7-8]"
  assert de.initialize_args(env, dist())["coordinator_address"].startswith("h7:")
  assert de.initialize_args(slurm(1, 0), dist()) is None


def test_slurm_errors_name_the_variables():
  with pytest.raises(de.DistributedEnvError, match=r"SLURM_PROCID=4 .*SLURM_NTASKS=4"):
    de.initialize_args(slurm(4, 4), dist())
  no_procid = slurm(4, 0)
  del no_procid["SLURM_PROCID"]
  with pytest.raises(de.DistributedEnvError, match=r"SLURM_PROCID is not set.*srun"):
    de.initialize_args(no_procid, dist())
  with pytest.raises(de.DistributedEnvError, match=r"SLURM_NTASKS='four' is not an integer"):
    de.initialize_args(slurm("four", 0), dist())


# --- torchrun-style (Kubernetes) and TPU ------------------------------------------------------


def test_torchrun_env():
  env = {"MASTER_ADDR": "cvj-train-0.cvj-train", "MASTER_PORT": "12345", "WORLD_SIZE": "4", "RANK": "3"}
  assert de.initialize_args(env, dist()) == {
    "coordinator_address": "cvj-train-0.cvj-train:12345",
    "num_processes": 4,
    "process_id": 3,
    "cluster_detection_method": "deactivate",
  }
  per_gpu = de.initialize_args({**env, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, dist())
  assert per_gpu["local_device_ids"] == [1]
  # Under torchrun its agent's store holds MASTER_PORT.
  under = de.initialize_args({**env, "TORCHELASTIC_RUN_ID": "x"}, dist())
  assert under["coordinator_address"].endswith(":12346")
  # The launcher's variables come before the Slurm task around it.
  assert de.initialize_args({**slurm(2, 1), **env}, dist())["num_processes"] == 4
  assert de.initialize_args({"WORLD_SIZE": "1", "RANK": "0"}, dist()) is None


def test_torchrun_errors_name_the_variables():
  for env, match in [
    ({"RANK": "1"}, r"RANK=1 is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 is set but RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 is outside \[0, WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, r"WORLD_SIZE=2 but MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1"}, r"LOCAL_RANK=1 is set but LOCAL_WORLD_SIZE is not"),
  ]:
    with pytest.raises(de.DistributedEnvError, match=match):
      de.initialize_args(env, dist())


def test_tpu_env():
  hosts = "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"
  assert de.initialize_args({"TPU_WORKER_HOSTNAMES": hosts, "TPU_WORKER_ID": "2"}, dist()) == {}
  assert de.initialize_args({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, dist()) is None
  assert de.initialize_args({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, dist()) == {}
  # What launch.tpu sets: over gcloud ssh a TPU VM has no TPU_* variables, JAX reads metadata.
  assert de.initialize_args({"CVJ_DISTRIBUTED": "auto"}, dist()) == {}


def test_single_process_and_off():
  assert de.initialize_args({}, dist()) is None
  assert de.initialize_args({}, None) is None  # A config without a distributed section.
  assert de.initialize_args({**slurm(8, 3), "CVJ_DISTRIBUTED": "off"}, dist()) is None
  with pytest.raises(de.DistributedEnvError, match="CVJ_DISTRIBUTED='yes'"):
    de.initialize_args({"CVJ_DISTRIBUTED": "yes"}, dist())


# --- the config -------------------------------------------------------------------------------


def test_explicit_config_wins():
  full = dist(4, "10.1.2.3:9999", 1)
  assert de.initialize_args(slurm(8, 5), full) == {
    "coordinator_address": "10.1.2.3:9999",
    "num_processes": 4,
    "process_id": 1,
    "cluster_detection_method": "deactivate",
  }
  # Fields left unset come from the environment.
  mixed = de.initialize_args(slurm(8, 5), dist(coordinator_address="10.1.2.3:9999"))
  assert (mixed["coordinator_address"], mixed["num_processes"], mixed["process_id"]) == ("10.1.2.3:9999", 8, 5)
  # Only a count, no environment: JAX detects the rest (a TPU VM), as before.
  assert de.initialize_args({}, dist(4)) == {"num_processes": 4}
  assert de.initialize_args({}, {"num_processes": 2, "process_id": 0}) == {"num_processes": 2, "process_id": 0}


def test_config_errors_name_the_fields():
  with pytest.raises(
    de.DistributedEnvError,
    match=r"process_id 4 is outside \[0, "
    r"num_processes=4\).*distributed.process_id",
  ):
    de.initialize_args({}, dist(4, "h:1", 4))
  with pytest.raises(
    de.DistributedEnvError, match=r"process_id 9 is outside \[0, num_processes=8\) \(config \+ slurm\)"
  ):
    de.initialize_args(slurm(8, 1), dist(process_id=9))
  with pytest.raises(de.DistributedEnvError, match="coordinator_address='node01' has no port"):
    de.initialize_args({}, dist(2, "node01", 0))
  with pytest.raises(de.DistributedEnvError, match="set --config.distributed.num_processes"):
    de.initialize_args({}, dist(coordinator_address="node01:1234"))


def test_initialize_calls_jax_only_for_several_processes(monkeypatch):
  import jax

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert de.initialize(dist(), env={}) is None and calls == []
  env = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1"}
  assert de.initialize(dist(), env=env) == calls[0]
  assert calls[0]["coordinator_address"] == "h0:1"


# --- launch.tpu -------------------------------------------------------------------------------

TRAIN = [
  ".venv/bin/python",
  "-m",
  "launch.sft",
  "--config=configs/qwen2_5_vl_7b_sft.py",
  "--workdir=gs://bucket/runs/sft",
  "--config.data.paths=a b.json",
]


def test_tpu_run_command():
  remote = tpu.run_command(TRAIN, "~/cvj", "/tmp/logs", tpu.parse_env(["XLA_FLAGS=--a=1 --b"]))
  args = tpu.gcloud_ssh("my-slice", "us-central2-b", remote, project="proj")
  assert args[:8] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "my-slice",
    "--zone=us-central2-b",
    "--project=proj",
  ]
  assert args[8] == "--worker=all" and args[9] == f"--command={remote}"
  assert remote.startswith('set -o pipefail; cd "$HOME"/cvj && mkdir -p /tmp/logs && W=')
  assert (
    "CVJ_DISTRIBUTED=auto PYTHONUNBUFFERED=1 XLA_FLAGS='--a=1 --b' "
    + shlex.join(TRAIN)
    + " 2>&1 | tee /tmp/logs/worker-$W.log"
  ) in remote
  assert "agent-worker-number" in remote  # The worker's index on a TPU VM (no TPU_WORKER_ID).
  with pytest.raises(ValueError, match="KEY=VALUE"):
    tpu.parse_env(["1BAD=x"])
  with pytest.raises(ValueError, match="no command"):
    tpu.run_command([])


def test_tpu_run_command_runs_in_bash(tmp_path):
  """The remote line, run by a local bash as a worker would: logs per worker, the env set, the
  command's exit status kept through the tee."""
  script = "import os, sys; print('dist', os.environ['CVJ_DISTRIBUTED'], os.environ['K']); sys.exit(3)"
  remote = tpu.run_command(["python3", "-c", script], str(tmp_path), "logs", {"K": "v w"})
  proc = subprocess.run(
    ["bash", "-c", remote], env={**os.environ, "TPU_WORKER_ID": "5"}, capture_output=True, text=True, timeout=30
  )
  assert proc.returncode == 3
  assert (tmp_path / "logs" / "worker-5.log").read_text() == "dist auto v w\n"


def test_tpu_stop_command():
  stop = tpu.stop_command(TRAIN)
  assert stop.startswith("pkill -f -- '-m ([l]aunch\\.sft)( |$)'")
  assert "[l]aunch\\.rollout" in tpu.stop_command()  # No command: every training launcher.
  # The pattern matches the training process but not the shell that runs pkill.
  pattern = shlex.split(stop)[3]
  assert subprocess.run(["grep", "-qE", "--", pattern], input=shlex.join(TRAIN), text=True).returncode == 0
  assert subprocess.run(["grep", "-qE", "--", pattern], input=stop, text=True).returncode == 1
  assert subprocess.run(["grep", "-qE", "--", pattern], input="python -m launch.sft_old", text=True).returncode == 1


def test_tpu_dry_run_cli():
  base = [sys.executable, "-m", "launch.tpu", "--tpu=pod", "--zone=z", "--dry_run"]
  out = subprocess.run(base + ["--env=A=1", "--"] + TRAIN, cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  args = shlex.split(out.stdout)
  assert args[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z"]
  assert args[-1] == "--command=" + tpu.run_command(TRAIN, env={"A": "1"})
  stop = subprocess.run(base + ["--stop"], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert shlex.split(stop.stdout)[-1] == "--command=" + tpu.stop_command()


# --- Slurm batch script, Kubernetes manifest, launch.cluster ----------------------------------


def test_sbatch_script(tmp_path):
  text = open(SBATCH).read()
  assert subprocess.run(["bash", "-n", SBATCH]).returncode == 0
  assert "#SBATCH --ntasks-per-node=1" in text and "##SBATCH --gpus-per-task=1" in text
  assert 'srun --kill-on-bad-exit=1 --label "$@"' in text
  # Run it with an srun that prints its arguments: the default command, then a given one.
  (tmp_path / "srun").write_text('#!/bin/bash\necho "srun $*"\n')
  (tmp_path / "srun").chmod(0o755)
  env = {
    **os.environ,
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
    "SLURM_SUBMIT_DIR": ROOT,
    "WORKDIR": "/shared/runs/sft",
  }
  out = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[-1] == (
    "srun --kill-on-bad-exit=1 --label .venv/bin/python -m launch.sft "
    "--config=configs/qwen2_5_vl_7b_sft.py --workdir=/shared/runs/sft"
  )
  out = subprocess.run(["bash", SBATCH, *TRAIN], env=env, capture_output=True, text=True, timeout=30)
  assert out.stdout.splitlines()[-1] == "srun --kill-on-bad-exit=1 --label " + " ".join(TRAIN)
  del env["WORKDIR"]
  out = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode != 0 and "WORKDIR" in out.stderr


def test_k8s_manifest():
  import yaml

  service, job = yaml.safe_load_all(open(MANIFEST))
  assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
  spec = job["spec"]
  assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
  pod = spec["template"]["spec"]
  # A preempted run (exit 75 after its checkpoint, train/preemption.py) is recreated, not failed;
  # Kubernetes takes podFailurePolicy only with restartPolicy Never.
  (requeue, *_) = spec["podFailurePolicy"]["rules"]
  assert requeue["action"] == "Ignore" and requeue["onExitCodes"]["values"] == [75]
  assert pod["restartPolicy"] == "Never"
  assert pod["subdomain"] == service["metadata"]["name"]
  env = {e["name"]: e for e in pod["containers"][0]["env"]}
  assert env["WORLD_SIZE"]["value"] == str(spec["completions"])
  assert "job-completion-index" in env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
  assert env["MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
  assert env["MASTER_PORT"]["value"] == str(service["spec"]["ports"][0]["port"])
  # What pod 3 of 4 derives from them.
  pod_env = {
    "WORLD_SIZE": "4",
    "RANK": "3",
    "MASTER_ADDR": env["MASTER_ADDR"]["value"],
    "MASTER_PORT": env["MASTER_PORT"]["value"],
  }
  args = de.initialize_args(pod_env, dist())
  assert args["coordinator_address"] == "cvj-train-0.cvj-train:12345"


def test_cluster_commands():
  assert cluster.sbatch_command(TRAIN, 4, ["--partition=gpu"]) == [
    "sbatch",
    "--nodes=4",
    "--partition=gpu",
    "launch/slurm/train.sbatch",
    *TRAIN,
  ]
  import yaml

  _, job = yaml.safe_load_all(cluster.k8s_manifest(TRAIN, 8, image="reg/cvj:1"))
  container = job["spec"]["template"]["spec"]["containers"][0]
  assert job["spec"]["completions"] == job["spec"]["parallelism"] == 8
  assert container["image"] == "reg/cvj:1" and container["command"] == TRAIN
  assert {e["name"]: e.get("value") for e in container["env"]}["WORLD_SIZE"] == "8"
  out = subprocess.run(
    [sys.executable, "-m", "launch.cluster", "--scheduler=slurm", "--nodes=2", "--dry_run", "--"] + TRAIN,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 0, out.stderr
  assert shlex.split(out.stdout) == cluster.sbatch_command(TRAIN, 2)


def test_two_processes_initialize_from_a_torchrun_env(tmp_path):
  """Two real processes on this CPU, each given only what a Kubernetes pod gets, form one JAX
  run of 2 processes and 4 devices."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  probe = (
    "from codevision_jax import distributed_env; distributed_env.initialize(None); "
    "import jax; print(jax.process_index(), jax.process_count(), jax.device_count())"
  )
  foreign = ("SLURM_", "TPU_", "MEGASCALE_", "CVJ_", "LOCAL_", "TORCHELASTIC", "JAX_")
  base = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
  base.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    WORLD_SIZE="2",
    MASTER_ADDR="localhost",
    MASTER_PORT=str(port),
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", probe],
      cwd=ROOT,
      env={**base, "RANK": str(r)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for r in range(2)
  ]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert [o.split() for o, _ in outs] == [["0", "2", "4"], ["1", "2", "4"]]
