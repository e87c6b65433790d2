"""bench/cpu_profile.py: py-spy's folded stacks summed per function, inclusive and self, and
the innermost functions traced to their nearest caller from another package."""

from bench.cpu_profile import short, summarize

# As `py-spy record --format raw` writes them: root frame first, a sample count last.
MAIN = "<module> (llmjob_operator/main.py:10)"
DEEPCOPY = "deepcopy (copy.py:1);_deepcopy_dict (copy.py:2)"
FOLDED = "\n".join(
    [
        f"{MAIN};run (llmjob_operator/controller.py:50);plan (llmjob_operator/reconcile.py:9) 30",
        f"{MAIN};run (llmjob_operator/controller.py:52);dumps (json/__init__.py:231) 10",
        f"{MAIN};recurse (a.py:1);recurse (a.py:2) 5",
        f"{MAIN};put (llmjob_operator/store.py:7);{DEEPCOPY} 3",
        f"{MAIN};event (kopf/x.py:1);{DEEPCOPY} 2",
        "not a stack line",
    ]
)


def test_inclusive_counts_a_function_once_per_sample_and_self_counts_the_innermost() -> None:
    profile = summarize(FOLDED)
    total, inclusive, own = profile.total, profile.inclusive, profile.own
    assert total == 50
    assert inclusive["<module> (llmjob_operator/main.py)"] == 50
    assert inclusive["run (llmjob_operator/controller.py)"] == 40  # lines 50 and 52 add up
    assert inclusive["recurse (a.py)"] == 5  # recursion is not counted twice
    assert own["plan (llmjob_operator/reconcile.py)"] == 30
    assert own["dumps (json/__init__.py)"] == 10
    assert own["run (llmjob_operator/controller.py)"] == 0


def test_a_library_function_is_traced_to_who_called_into_the_library() -> None:
    profile = summarize(FOLDED)
    # deepcopy recursing is one call: its caller is the first frame outside copy.py.
    assert profile.callers["_deepcopy_dict (copy.py)"] == {
        "put (llmjob_operator/store.py)": 3,
        "event (kopf/x.py)": 2,
    }
    assert profile.callers["dumps (json/__init__.py)"] == {
        "run (llmjob_operator/controller.py)": 10
    }
    # Our own code calling itself: the caller is the nearest frame outside our package.
    assert profile.callers["plan (llmjob_operator/reconcile.py)"] == {"(root)": 30}


def test_frames_lose_their_install_prefix() -> None:
    frame = "put_owned (/work/main/operator/llmjob_operator/store.py:171)"
    assert short(frame) == "put_owned (llmjob_operator/store.py)"
    site = "loads (/venv/lib/python3.11/site-packages/kopf/_core/engines/x.py:3)"
    assert short(site) == "loads (kopf/_core/engines/x.py)"
