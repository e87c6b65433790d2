"""`make bench`: prepare throughput, our trainer's tokens/s against a bare DeepSpeed loop,
and checkpoint I/O.

Both loops run the same train.json (model, data, DeepSpeed config) as single processes,
alternating, BENCH_ROUNDS times each. Both are timed the same way, by this script's
clock: each prints a line when step WARMUP_STEPS and when its last step is done (after
a device sync), and the run's tokens/s is the tokens of the steps between over the time
between the two lines' arrival. So both sides cover the same steps with the same warm-up
excluded, and neither side's own timing or logging enters the figure. Prints figures;
asserts nothing.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmjob_trainer.prepare import TEXT_SUFFIXES, prepare, source_files

HERE = Path(__file__).resolve().parent
# "step 5/20 | loss ..." (llmjob-train) or "bare step 5 | ..." (the bare loop).
STEP_DONE = re.compile(r"(?:^|\s)step (\d+)(?:/| \|)")
WARMUP_STEPS = 5
# Main's peak is VmHWM: ru_maxrss survives exec, so it would start at this script's size.
PREPARE_PEAK = """
import re, resource, sys, time
from pathlib import Path
from llmjob_trainer.prepare import prepare
started = time.perf_counter()
counts = prepare([Path(sys.argv[1])], Path(sys.argv[2]), None, 0.01, None, workers=int(sys.argv[3]))
seconds = time.perf_counter() - started
main = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(sum(counts.values()), seconds, main, worker)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(directory: Path, data: Path, steps: int, interval: int) -> Path:
    config = {
        "jobName": "bench",
        # Bigger than the tests' tiny model so the step, not the loop, dominates on a CPU.
        "model": {"preset": "tiny", "config": {"n_layer": 4, "n_embd": 128}},
        "data": {"path": str(data / "train.bin")},
        "training": {
            "maxSteps": steps,
            "seqLen": 128,
            "microBatchSize": 8,
            "warmupSteps": 5,
            "precision": "fp32",
            "zeroStage": 2,
            "logIntervalSteps": interval,
        },
        # Never: each run trains from step 0 instead of resuming the previous run's commit.
        "checkpoint": {
            "dir": str(directory / "checkpoints"),
            "intervalSteps": 10 * steps,
            "resume": "Never",
        },
        "metricsPort": 0,
    }
    path = directory / "train.json"
    path.write_text(json.dumps(config))
    return path


def tokens_per_second(command: list[str], steps: int, tokens_per_step: int) -> float:
    """Tokens/s between the end of step WARMUP_STEPS and the end of the last step."""
    env = {
        **os.environ,
        # One thread: on a shared machine two OpenMP threads stall whenever either one is
        # descheduled, which swings a run's speed several-fold; one thread degrades evenly.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    env["PYTHONUNBUFFERED"] = "1"
    arrived: dict[int, float] = {}
    lines: list[str] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = STEP_DONE.search(line)
            if match and int(match.group(1)) in (WARMUP_STEPS, steps):
                arrived.setdefault(int(match.group(1)), time.monotonic())
    if process.returncode != 0 or len(arrived) != 2:
        raise SystemExit(f"{command} exited {process.returncode}:\n{''.join(lines[-40:])}")
    seconds = arrived[steps] - arrived[WARMUP_STEPS]
    return tokens_per_step * (steps - WARMUP_STEPS) / seconds


def stdlib_as_parquet(path: Path) -> Path:
    """This Python's stdlib text files as one Parquet file, a row each (column "text"):
    the same documents prepare reads from the directory, so the same tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [f for f in source_files(Path(os.__file__).parent) if f.suffix in TEXT_SUFFIXES]
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(files), 256):
            texts = [
                f.read_text(encoding="utf-8", errors="replace") for f in files[start : start + 256]
            ]
            writer.write_table(pa.table({"text": texts}, schema=schema))
    return path


def bench_prepare(directory: Path) -> None:
    """Tokens/s and peak memory of llmjob-prepare (byte-level) over this Python's stdlib,
    read as files and as a Parquet file."""
    sources = {
        "stdlib": Path(os.__file__).parent,
        "stdlib as Parquet": stdlib_as_parquet(directory / "stdlib.parquet"),
    }
    for name, source in sources.items():
        for workers in (1, 2):
            out = directory / f"prepared-{source.name}-{workers}"
            result = subprocess.run(
                [sys.executable, "-c", PREPARE_PEAK, str(source), str(out), str(workers)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            tokens, seconds, main_kib, worker_kib = result.stdout.split()
            print(
                f"prepare ({name}, byte-level, {workers} worker{'s' if workers > 1 else ''}): "
                f"{int(tokens):,} tokens in {float(seconds):.1f} s = "
                f"{int(tokens) / float(seconds):,.0f} tokens/s; peak RSS main "
                f"{int(main_kib) / 1024:.0f} MiB, worker {int(worker_kib) / 1024:.0f} MiB",
                flush=True,
            )


def main() -> None:
    steps, interval = int(os.environ.get("BENCH_STEPS", "20")), WARMUP_STEPS
    with tempfile.TemporaryDirectory(prefix="llmjob-bench-") as scratch:
        directory = Path(scratch)
        bench_prepare(directory)
        stdlib = Path(os.__file__).parent
        prepare([stdlib], directory / "data", None, 0.0, 4_000_000)
        config = write_config(directory, directory / "data", steps, interval)
        ours_cmd = [sys.executable, "-m", "llmjob_trainer.train", "--config", str(config)]
        bare_cmd = [sys.executable, str(HERE / "bare_deepspeed.py"), str(config)]
        run = json.loads(config.read_text())["training"]
        tokens_per_step = (
            run["microBatchSize"] * run.get("gradientAccumulationSteps", 1) * run["seqLen"]
        )
        ours, bare = [], []
        for attempt in range(int(os.environ.get("BENCH_ROUNDS", "5"))):
            # Alternate which side goes first, so a drift in load favours neither.
            first, second = (ours_cmd, bare_cmd) if attempt % 2 == 0 else (bare_cmd, ours_cmd)
            rates = {id(c): tokens_per_second(c, steps, tokens_per_step) for c in (first, second)}
            ours.append(rates[id(ours_cmd)])
            bare.append(rates[id(bare_cmd)])
            print(
                f"run {attempt + 1}: llmjob-train {ours[-1]:.0f}, bare {bare[-1]:.0f} tok/s",
                flush=True,
            )
        print(f"tokens/s  llmjob-train: {' '.join(f'{r:.0f}' for r in ours)}")
        print(f"tokens/s  bare DeepSpeed: {' '.join(f'{r:.0f}' for r in bare)}")
        # Load drifts between rounds, so each round's adjacent pair is the fair comparison.
        rounds = sorted(o / b for o, b in zip(ours, bare, strict=True))
        print(f"ratio per round: {' '.join(f'{r:.3f}' for r in rounds)}")
        print(
            f"ratio, median of rounds: {statistics.median(rounds):.3f} "
            f"(spread {rounds[0]:.3f}..{rounds[-1]:.3f})"
        )
    subprocess.run([sys.executable, str(HERE / "checkpoint_io.py")], check=True)


if __name__ == "__main__":
    main()
