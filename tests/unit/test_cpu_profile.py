"""bench/cpu_profile.py: py-spy's folded stacks summed per function, inclusive and self."""

from bench.cpu_profile import short, summarize

# As `py-spy record --format raw` writes them: root frame first, a sample count last.
MAIN = "<module> (llmjob_operator/main.py:10)"
FOLDED = "\n".join(
    [
        f"{MAIN};run (llmjob_operator/controller.py:50);plan (llmjob_operator/reconcile.py:9) 30",
        f"{MAIN};run (llmjob_operator/controller.py:52);dumps (json/__init__.py:231) 10",
        f"{MAIN};recurse (a.py:1);recurse (a.py:2) 5",
        "not a stack line",
    ]
)


def test_inclusive_counts_a_function_once_per_sample_and_self_counts_the_innermost() -> None:
    total, inclusive, own = summarize(FOLDED)
    assert total == 45
    assert inclusive["<module> (llmjob_operator/main.py)"] == 45
    assert inclusive["run (llmjob_operator/controller.py)"] == 40  # lines 50 and 52 add up
    assert inclusive["recurse (a.py)"] == 5  # recursion is not counted twice
    assert own["plan (llmjob_operator/reconcile.py)"] == 30
    assert own["dumps (json/__init__.py)"] == 10
    assert own["run (llmjob_operator/controller.py)"] == 0


def test_frames_lose_their_install_prefix() -> None:
    frame = "put_owned (/work/main/operator/llmjob_operator/store.py:171)"
    assert short(frame) == "put_owned (llmjob_operator/store.py)"
    site = "loads (/venv/lib/python3.11/site-packages/kopf/_core/engines/x.py:3)"
    assert short(site) == "loads (kopf/_core/engines/x.py)"
