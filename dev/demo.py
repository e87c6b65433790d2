"""`make demo`: the operator trains a real model on the local cluster, as a user would run it.

Installs the CRD and the operator with the helm chart, prepares the demo corpus (the Python
standard library's sources) onto a claim, applies examples/cpu-demo.yaml (2 workers,
DeepSpeed ZeRO-2, the tiny GPT-2) and follows it as `kubectl get llmjob` does; then shows
where the checkpoints and the exported model are, generates a sample from the exported
model, and exits 0 only if the job Succeeded. The operator runs from the image `make images`
built and the workers from the CPU trainer image; the operator stays installed, so the next
`kubectl apply` of a job is reconciled, and the demo ends by saying how to submit one and
how to stop everything.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".devcluster"
KUBECONFIG = STATE / "kubeconfig"
NAMESPACE = "llmjob-demo"
OPERATOR_NAMESPACE = "llmjob-system"
RELEASE = "llmjob-operator"
JOB = "demo"
TRAINER_IMAGE = "ghcr.io/llmjob/trainer:0.1.0-cpu"
FOLLOW_TIMEOUT_SECONDS = 1200


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def tool(name: str, *args: str, capture: bool = False) -> str:
    command = [str(STATE / "bin" / name), f"--kubeconfig={KUBECONFIG}", *args]
    result = subprocess.run(command, check=True, text=True, capture_output=capture)
    return result.stdout if capture else ""


def kubectl_json(*args: str) -> Any:
    return json.loads(tool("kubectl", *args, "-o", "json", capture=True))


def free_port() -> int:
    # Pods of the local cluster share the host's network: pick ports nobody holds.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def install_operator() -> int:
    say("installing the CRD and the operator with helm")
    # As the README says: the CRD by kubectl (helm installs crds/ once, never upgrades them).
    tool("kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    metrics_port = free_port()
    tool(
        "helm",
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "helm" / "llmjob-operator"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--skip-crds",
        f"--set=defaultTrainerImage={TRAINER_IMAGE}",
        # One replica: pods here share the host's network, so a second would bind the same ports.
        "--set=replicaCount=1",
        f"--set=metricsPort={metrics_port}",
        f"--set=healthPort={free_port()}",
        "--set=extraArgs={--progress-interval=3}",
        "--wait",
        "--timeout=180s",
    )
    return metrics_port


def fresh_namespace() -> None:
    existing = subprocess.run(
        [str(STATE / "bin" / "kubectl"), f"--kubeconfig={KUBECONFIG}", "get", "ns", NAMESPACE],
        capture_output=True,
        check=False,
    )
    if existing.returncode == 0:
        say(f"deleting the previous run's namespace {NAMESPACE}")
        tool("kubectl", "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=180s")
    tool("kubectl", "create", "namespace", NAMESPACE)
    tool(
        "kubectl",
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    )


def prepare_data() -> None:
    say("tokenizing the Python standard library onto claim llmjob-demo-data")
    tool("kubectl", "apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "demo-data.yaml"))
    tool(
        "kubectl",
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=complete",
        "job/llmjob-demo-data",
        "--timeout=300s",
    )
    print(tool("kubectl", "logs", "-n", NAMESPACE, "job/llmjob-demo-data", capture=True), end="")


def pod_ip(namespace: str, selector: str) -> str | None:
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    ips = [p["status"].get("podIP") for p in pods if p["status"].get("phase") == "Running"]
    return next((ip for ip in ips if ip), None)


def follow(operator_metrics_port: int) -> dict[str, Any]:
    say(f"applying examples/cpu-demo.yaml; following it (kubectl get llmjob -n {NAMESPACE})")
    tool("kubectl", "apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "cpu-demo.yaml"))
    max_steps = kubectl_json("get", "llmjob", JOB, "-n", NAMESPACE)["spec"]["training"]["maxSteps"]
    started = time.monotonic()
    last_line = ""
    urls_shown = False
    while time.monotonic() - started < FOLLOW_TIMEOUT_SECONDS:
        status = kubectl_json("get", "llmjob", JOB, "-n", NAMESPACE).get("status") or {}
        progress = status.get("progress") or {}
        tokens_per_second = progress.get("tokensPerSecond")
        line = (
            f"phase={status.get('phase', '-')} workers={status.get('workers', {}).get('summary')}"
            f" step={progress.get('step', 0)}/{max_steps} loss={progress.get('loss', '-')}"
            f" tokens/s={f'{tokens_per_second:.0f}' if tokens_per_second else '-'}"
            f" restarts={status.get('restarts', 0)}"
        )
        if line != last_line:
            print(f"[{time.monotonic() - started:5.0f}s] {line}", flush=True)
            last_line = line
        if not urls_shown and status.get("phase") == "Running":
            urls_shown = show_metrics_urls(operator_metrics_port)
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(2)
    raise SystemExit(f"demo: the job did not finish in {FOLLOW_TIMEOUT_SECONDS}s")


def show_metrics_urls(operator_metrics_port: int) -> bool:
    operator_ip = pod_ip(OPERATOR_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    worker_ip = pod_ip(NAMESPACE, "training.llmjob.dev/worker-index=0")
    if operator_ip is None or worker_ip is None:
        return False
    say(f"operator metrics: http://{operator_ip}:{operator_metrics_port}/metrics")
    say(f"trainer metrics (rank 0, while it runs): http://{worker_ip}:9400/metrics")
    return True


def checkpoint_dir() -> Path:
    claim = kubectl_json("get", "pvc", f"{JOB}-checkpoints", "-n", NAMESPACE)
    volume = kubectl_json("get", "pv", claim["spec"]["volumeName"])
    return Path(volume["spec"]["hostPath"]["path"]) / JOB


def show_results(directory: Path) -> None:
    committed = sorted(str(p.relative_to(directory)) for p in directory.glob("runs/*/step_*"))
    say(f"committed checkpoints (in the pods at /checkpoints/{JOB}): {directory}: {committed}")
    export = directory / "export"
    say(f"exported Hugging Face model: {export}: {sorted(p.name for p in export.iterdir())}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    prompt = "def "
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=80, do_sample=True, top_k=20, temperature=0.8)
    sample = tokenizer.decode(output[0], skip_special_tokens=True)
    say(f"a sample from the exported model (prompt {prompt!r}):")
    print(sample)


def show_next_steps() -> None:
    kubectl = f"{STATE / 'bin' / 'kubectl'} --kubeconfig={KUBECONFIG}"
    helm = f"{STATE / 'bin' / 'helm'} --kubeconfig={KUBECONFIG}"
    say(f"the operator stays installed (helm release {RELEASE} in {OPERATOR_NAMESPACE}). Next:")
    print(
        f"  submit a job:   {kubectl} apply -n {NAMESPACE} -f my-job.yaml"
        f"   (start from examples/cpu-demo.yaml: a new metadata.name)\n"
        f"  follow it:      {kubectl} get llmjob -n {NAMESPACE} -w\n"
        f"  its logs:       {kubectl} logs -n {NAMESPACE} <job>-worker-0\n"
        f"  stop the operator: {helm} uninstall {RELEASE} -n {OPERATOR_NAMESPACE}\n"
        f"  stop everything:   make cluster-down   (the cluster, its pods and the operator)",
        flush=True,
    )


def main() -> int:
    started = time.monotonic()
    metrics_port = install_operator()
    fresh_namespace()
    prepare_data()
    status = follow(metrics_port)
    if status.get("phase") != "Succeeded":
        say("the job failed:")
        print(json.dumps(status.get("conditions"), indent=2))
        show_next_steps()
        return 1
    show_results(checkpoint_dir())
    say(f"Succeeded in {time.monotonic() - started:.0f}s (setup included)")
    show_next_steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
