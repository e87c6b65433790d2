"""`make bench-checkpoint`: what a commit costs the training loop, sync vs async, and how long
the universal conversion for an elastic resume takes.

    python checkpoint_async.py [preset]     # default gpt2-124m (about 2 GB of state)

Three single-process runs of the real trainer on the same config (fp32, ZeRO-2): no
commit but the last, synchronous commits, asynchronous commits, every BENCH_INTERVAL steps.
Each step's wall time comes from the trainer's own log (one line per step). Figures:
- blocking: seconds per commit the loop waited (the trainer logs it with each commit);
- extra loop time per commit: the run's summed step times (commits included) minus the
  no-commit run's, per commit: blocking plus any slowdown of steps beside a write in flight;
- overhead: that over (interval x base step time), for the measured interval and for the
  default (checkpoint.intervalSteps 100). A busy machine makes these noisy: rerun.
Then ds_to_universal on the final commit of this preset and of the tiny model.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmjob_trainer.checkpoint import convert_to_universal
from llmjob_trainer.config import checkpoint_tag
from llmjob_trainer.prepare import prepare

STEP_LINE = re.compile(r"step (\d+)/\d+ \|.* \| ([\d.]+) ms/step")
COMMIT_LINE = re.compile(r"committed step_(\d+) \(.* in ([\d.]+) s, ([\d.]+) s blocking\)")
DEFAULT_INTERVAL = 100


def write_config(
    directory: Path, data: Path, preset: str, steps: int, interval: int, mode: str
) -> Path:
    config = {
        "jobName": "bench",
        "model": {"preset": preset},
        "data": {"path": str(data / "train.bin")},
        "training": {
            "maxSteps": steps,
            "seqLen": 64,
            "microBatchSize": 1,
            "warmupSteps": 2,
            "precision": "fp32",
            "zeroStage": 2,
            "logIntervalSteps": 1,
        },
        "checkpoint": {
            "dir": str(directory / mode / "checkpoints"),
            "intervalSteps": 10 * steps if mode == "none" else interval,
            "keepLast": 1,
            "asyncSave": mode == "async",
        },
        "metricsPort": 0,
    }
    path = directory / mode / "train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(config))
    return path


def run(config: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [sys.executable, "-m", "llmjob_trainer.train", "--config", str(config)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    (config.parent / "trainer.log").write_text(result.stdout + result.stderr)  # kept on failure
    if result.returncode != 0:
        raise SystemExit(f"trainer failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout + result.stderr


def step_ms(output: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in STEP_LINE.finditer(output)}


def commits(output: str) -> list[tuple[int, float, float]]:
    """(step, seconds from save to commit, blocking seconds) of every commit but the last."""
    found = [
        (int(m.group(1)), float(m.group(2)), float(m.group(3)))
        for m in COMMIT_LINE.finditer(output)
    ]
    return found[:-1]  # the final commit always waits (the run ends with it)


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else "gpt2-124m"
    steps = int(os.environ.get("BENCH_STEPS", "16"))
    interval = int(os.environ.get("BENCH_INTERVAL", "4"))
    with tempfile.TemporaryDirectory(
        prefix="llmjob-ckpt-async-", dir=os.environ.get("BENCH_DIR")
    ) as scratch:
        directory = Path(scratch)
        prepare([Path(os.__file__).parent / "json"], directory / "data", None, 0.0, 200_000)
        outputs = {}
        for mode in ("async", "sync", "none"):  # each run's commit figures print as it ends
            config = write_config(directory, directory / "data", preset, steps, interval, mode)
            outputs[mode] = run(config)
            if mode != "none":
                done = commits(outputs[mode])
                print(
                    f"{preset} {mode}: blocking {statistics.median(b for *_, b in done):.2f} s "
                    f"per commit, save to commit {statistics.median(t for _, t, _ in done):.2f} s",
                    flush=True,
                )
        times = {mode: step_ms(output) for mode, output in outputs.items()}
        # Step 1 compiles/warms up; every step of the no-commit run after it is the baseline.
        base = statistics.median(ms for step, ms in times["none"].items() if step > 1)
        print(f"{preset}: {steps} steps, a commit every {interval}; base step {base:.0f} ms")
        baseline_total = sum(ms for step, ms in times["none"].items() if step > 1)
        for mode in ("sync", "async"):
            done = commits(outputs[mode])
            blocking = statistics.median(b for _s, _t, b in done)
            commit_seconds = statistics.median(t for _s, t, _b in done)
            # The loop's extra wall time per commit: its blocking plus any slowdown of the
            # steps that ran beside a write in flight (the log times each step, commits included).
            total = sum(ms for step, ms in times[mode].items() if step > 1)
            extra = max(0.0, (total - baseline_total) / 1000 / len(done))
            print(
                f"  {mode:5s}: blocking {blocking:.2f} s/commit (save to commit "
                f"{commit_seconds:.2f} s), extra loop time {extra:.2f} s/commit: overhead "
                f"{100 * extra / (interval * base / 1000):.1f}% at interval {interval}, "
                f"{100 * extra / (DEFAULT_INTERVAL * base / 1000):.2f}% at {DEFAULT_INTERVAL}"
            )
        tiny = run(write_config(directory, directory / "data", "tiny", 2, 2, "tiny"))
        assert "committed" in tiny
        for name, final in (
            (preset, directory / "sync" / "checkpoints" / "runs" / "bench" / checkpoint_tag(steps)),
            ("tiny", directory / "tiny" / "checkpoints" / "runs" / "bench" / checkpoint_tag(2)),
        ):
            started = time.perf_counter()
            convert_to_universal(final, final.with_name(final.name + ".universal"))
            print(f"  universal conversion {name}: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
