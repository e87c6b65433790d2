"""The cache: never older than what it holds, ownership by controller UID, relists."""

from typing import Any

from llmjob_operator.store import Store, slim


def job(name: str, uid: str, version: int, namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "training.llmjob.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": str(version),
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"workers": 2},
    }


def pod(name: str, owner_uid: str | None, version: int, uid: str = "") -> dict[str, Any]:
    refs = [{"kind": "LLMTrainingJob", "uid": owner_uid, "controller": True}] if owner_uid else []
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid or f"pod-{name}",
            "resourceVersion": str(version),
            "labels": {"training.llmjob.dev/job-name": name.split("-", maxsplit=1)[0]},
            "ownerReferences": refs,
            "managedFields": [{"manager": "llmjob-operator"}],
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "trainer", "image": "big"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.2", "hostIP": "10.0.0.1"},
    }


def test_an_older_resource_version_never_replaces_a_newer_one() -> None:
    store = Store()
    assert store.put_job(job("j", "u1", 10)) == (("ns", "j"), True)
    assert store.put_job(job("j", "u1", 9)) == (("ns", "j"), False)
    assert store.put_job(job("j", "u1", 10)) == (("ns", "j"), False)  # our own write's echo
    cached = store.job(("ns", "j"))
    assert cached is not None
    assert cached["metadata"]["resourceVersion"] == "10"
    assert "managedFields" not in cached["metadata"]
    stale_pod = pod("j-worker-0", "u1", 4)
    assert store.put_owned("Pod", pod("j-worker-0", "u1", 5))
    assert not store.put_owned("Pod", stale_pod)


def test_a_recreated_job_owns_nothing_of_its_predecessor() -> None:
    store = Store()
    store.put_job(job("j", "old", 1))
    store.put_owned("Pod", pod("j-worker-0", "old", 2))
    assert len(store.owned(("ns", "j"))) == 1
    store.drop_job(("ns", "j"), "old")
    store.put_job(job("j", "new", 3))
    # Same name, same labels: the old job's leftover pod is not the new job's.
    assert store.owned(("ns", "j")) == []
    assert store.cached("Pod", "ns", "j-worker-0") is not None
    store.put_owned("Pod", pod("j-worker-0", None, 4, uid="foreign"))
    assert store.owned(("ns", "j")) == []


def test_only_what_the_planner_reads_is_cached() -> None:
    kept = slim("Pod", pod("j-worker-0", "u1", 1))
    assert "managedFields" not in kept["metadata"]
    assert kept["spec"] == {"nodeName": "n1"}
    assert kept["status"] == {"phase": "Running", "podIP": "127.0.0.2"}


def test_a_relist_drops_what_vanished_but_keeps_what_is_newer_than_the_list() -> None:
    store = Store()
    store.put_job(job("j", "u1", 1))
    store.put_owned("Pod", pod("j-worker-0", "u1", 5))
    store.put_owned("Pod", pod("j-worker-1", "u1", 6))
    store.put_owned("Pod", pod("j-worker-2", "u1", 12))  # seen after the list was taken
    touched = store.replace("Pod", [pod("j-worker-0", "u1", 5)], 10, None)
    names = {p["metadata"]["name"] for p in store.owned(("ns", "j"))}
    assert names == {"j-worker-0", "j-worker-2"}
    assert touched == {("ns", "j")}
    assert store.replace("Pod", [pod("j-worker-0", "u1", 5)], 10, None) == set()


def test_a_namespaced_relist_leaves_other_namespaces_alone() -> None:
    store = Store()
    store.put_job(job("a", "ua", 1, namespace="one"))
    store.put_job(job("b", "ub", 2, namespace="two"))
    assert store.replace_jobs([], 10, "one") == {("one", "a")}
    assert store.job(("two", "b")) is not None
    assert store.job(("one", "a")) is None


def test_a_delete_drops_only_the_object_it_names() -> None:
    store = Store()
    store.put_job(job("j", "u1", 1))
    store.put_owned("Pod", pod("j-worker-0", "u1", 5, uid="second"))
    assert not store.drop_owned("Pod", pod("j-worker-0", "u1", 3, uid="first"))
    assert len(store.owned(("ns", "j"))) == 1
    assert store.drop_owned("Pod", pod("j-worker-0", "u1", 6, uid="second"))
    assert store.owned(("ns", "j")) == []
