"""launch/cluster/: the SLURM, TPU VM and Kubernetes launch files are well formed and their train commands parse."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

CLUSTER = os.path.join(REPO, "launch", "cluster")
SLURM, TPU, K8S = "slurm.sbatch", "tpu_vm.sh", "k8s_indexed_job.yaml"
# What each file's comment block must tell the user to set, and the parallel.distributed it uses.
MUST_MENTION = {
    SLURM: ["--nodes", "--gpus-per-node", "--partition", "--account", "WORKDIR", "VENV", "MESH", "resume"],
    TPU: ["TPU_NAME", "ZONE", "PROJECT", "REPO_URL", "WORKDIR", "MODEL", "MESH", "--worker=all", "resume"],
    K8S: ["image", "completions", "parallelism", "JAX_NUM_PROCESSES", "nvidia.com/gpu", "claimName", "mesh", "resume"],
}
DISTRIBUTED = {SLURM: "auto", TPU: "auto", K8S: "explicit"}
TRAIN = ["-m", "launch.train"]


def read(name):
    with open(os.path.join(CLUSTER, name)) as f:
        return f.read()


def comment_block(text):
    """The leading comment lines (after a shebang), '#' stripped."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#!"):
            continue
        if not line.startswith("#") or line.startswith("#SBATCH"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)


def shell_assignments(text):
    """NAME=value and NAME=${NAME:-value} lines: the defaults a script sets."""
    values = {}
    for name, value in re.findall(r"^([A-Z_][A-Z0-9_]*)=(\S+)\s*$", text, re.M):
        default = re.fullmatch(r"\$\{%s:-(.*)\}" % name, value)
        values[name] = default.group(1) if default else value
    return values


def shell_train_commands(text):
    """Argument lists after `python -m launch.train` in a shell script, quoting and continuations resolved.

    A command inside a quoted string (ssh --command="...") is found by splitting that token again.
    """

    def from_line(line):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if os.path.basename(token).startswith("python") and tokens[i + 1 : i + 3] == TRAIN:
                args = []
                for arg in tokens[i + 3 :]:
                    if arg and set(arg) <= set(";&|()"):  # an operator ends this command
                        break
                    args.append(arg)
                return [args]
        quoted = [inner for token in tokens if "launch.train" in token for inner in token.splitlines()]
        return [cmd for inner in quoted for cmd in from_line(inner)]

    lines = re.sub(r"\\\n", " ", text).splitlines()
    return [cmd for line in lines if "launch.train" in line and not line.lstrip().startswith("#") for cmd in from_line(line)]


def k8s_docs():
    yaml = pytest.importorskip("yaml")
    return {doc["kind"]: doc for doc in yaml.safe_load_all(read(K8S)) if doc}


def k8s_train_container(job):
    containers = job["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if "launch.train" in c.get("command", []) + c.get("args", [])]
    assert len(found) == 1, "expected one container running launch.train"
    return found[0]


def train_commands(name, workdir):
    """Each train command of a file as an argument list, shell/k8s variables filled in, workdir -> a tmp dir."""
    text = read(name)
    if name == K8S:
        c = k8s_train_container(k8s_docs()["Job"])
        argv = c.get("command", []) + c.get("args", [])
        commands = [argv[argv.index("launch.train") + 1 :]]
        variables = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        pattern = r"\$\((\w+)\)"  # Kubernetes substitutes $(VAR) from the container env
    else:
        commands = shell_train_commands(text)
        variables = shell_assignments(text)
        pattern = r"\$\{?(\w+)\}?"
    assert commands, f"{name}: no `python -m launch.train` command found"
    assert text.count("launch.train") >= len(commands)
    variables.update(WORKDIR=str(workdir), MODEL="transformer")

    def fill(arg):
        unknown = [v for v in re.findall(pattern, arg) if v not in variables]
        assert not unknown, f"{name}: {arg!r} uses {unknown}, which the file does not set"
        return re.sub(pattern, lambda m: variables[m.group(1)], arg)

    filled = []
    for args in commands:
        args = [fill(a) for a in args]
        filled.append([f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in args])
    return filled


@pytest.mark.parametrize("name", [SLURM, TPU, K8S])
def test_file_exists_and_says_what_to_set(name):
    text = read(name)
    block = comment_block(text)
    assert len(block.splitlines()) >= 5, f"{name}: no comment block at the top"
    missing = [word for word in MUST_MENTION[name] if word.lower() not in block.lower()]
    assert not missing, f"{name}: the top comment block does not mention {missing}"
    assert "TODO" not in text and "FIXME" not in text


@pytest.mark.parametrize("name", [SLURM, TPU])
def test_shell_scripts_pass_bash_n(name):
    proc = subprocess.run(["bash", "-n", os.path.join(CLUSTER, name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read(name).startswith("#!")


def test_slurm_directives_one_process_per_node():
    directives = dict(re.findall(r"^#SBATCH\s+(--[\w-]+)(?:=(\S+))?", read(SLURM), re.M))
    for flag in ("--nodes", "--gpus-per-node", "--time", "--output"):
        assert flag in directives, f"#SBATCH {flag} missing"
    assert directives["--ntasks-per-node"] == "1"
    assert re.search(r"^srun\b.*-m launch\.train", re.sub(r"\\\n", " ", read(SLURM)), re.M), "launch.train must run under srun"


def test_tpu_script_runs_on_every_worker():
    text = read(TPU)
    assert "set -euo pipefail" in text
    ssh = re.findall(r"gcloud compute tpus tpu-vm ssh [^\n]*", text)
    assert ssh and all('"$TPU_NAME"' in s and '--zone="$ZONE"' in s and "--worker=all" in s for s in ssh)
    assert "jax[tpu]" in text and "-e ." in text
    for name in ("TPU_NAME", "ZONE", "PROJECT", "REPO_URL", "WORKDIR", "MODEL"):
        assert re.search(rf"^{name}=", text, re.M), f"{name} is not set at the top of {TPU}"


def test_k8s_service_and_indexed_job_agree():
    docs = k8s_docs()
    assert set(docs) == {"Service", "Job"}
    service, job = docs["Service"], docs["Job"]
    assert service["spec"]["clusterIP"] in (None, "None")
    spec = job["spec"]
    assert job["apiVersion"] == "batch/v1" and spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert service["metadata"]["name"] == pod["subdomain"], "the Service name must be the pods' subdomain"
    pod_labels = {"job-name": job["metadata"]["name"], **spec["template"].get("metadata", {}).get("labels", {})}
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service must select the Job's pods"
    container = k8s_train_container(job)
    env = {e["name"]: e for e in container["env"]}
    n = int(env["JAX_NUM_PROCESSES"]["value"])
    assert spec["completions"] == spec["parallelism"] == n
    host, _, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rpartition(":")
    assert host.startswith(f"{job['metadata']['name']}-0.{service['metadata']['name']}"), host
    assert int(port) in [p["containerPort"] for p in container["ports"]]
    field = env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert any(k.endswith("/gpu") for k in container["resources"]["limits"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    workdir = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--workdir="))
    assert any(workdir.startswith(mounts[c]) for c in claims & set(mounts)), "the workdir must be on the PVC"


@pytest.mark.parametrize("name", [SLURM, TPU, K8S])
def test_train_commands_parse(name, tmp_path):
    for args in train_commands(name, tmp_path / "run"):
        assert any(a == f"--config.parallel.distributed={DISTRIBUTED[name]}" for a in args), args
        proc = subprocess.run(
            [sys.executable, "-m", "launch.train", *args, "--dry_run"],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, f"{name}: {shlex.join(args)}\n{proc.stderr}"
        assert "dry run OK" in proc.stdout, proc.stdout
        config = json.loads(proc.stdout[: proc.stdout.rindex("dry run OK")])
        assert config["parallel"]["distributed"] == DISTRIBUTED[name]
