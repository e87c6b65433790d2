"""The node agent's pure image rules: reference normalisation and lookup, and how a
container's command and user merge with its image's, as Kubernetes does."""

from llmjob_devcluster.images import Image, normalize, resolve
from llmjob_devcluster.podspec import container_command, image_user_ids

OPERATOR = Image(
    names=("ghcr.io/llmjob/operator:0.1.0", "localhost/llmjob-cache/operator:abc"),
    image_id="1" * 64,
    digest="sha256:" + "2" * 64,
    layers=("/store/l/A", "/store/l/B"),
    config={"Entrypoint": ["llmjob-operator"], "User": "65532:65532", "Env": ["A=1", "B=x=y"]},
)


def test_references_are_normalised_as_a_runtime_stores_them() -> None:
    assert normalize("busybox") == "docker.io/library/busybox:latest"
    assert normalize("llmjob/trainer:dev") == "docker.io/llmjob/trainer:dev"
    assert normalize("ghcr.io/llmjob/operator") == "ghcr.io/llmjob/operator:latest"
    assert normalize("localhost:5000/x:1") == "localhost:5000/x:1"
    assert normalize("localhost/x") == "localhost/x:latest"
    assert normalize("ghcr.io/o/x@sha256:ab") == "ghcr.io/o/x@sha256:ab"


def test_an_image_is_found_by_name_or_digest_and_an_unknown_one_is_not() -> None:
    assert resolve("ghcr.io/llmjob/operator:0.1.0", [OPERATOR]) is OPERATOR
    assert resolve(f"ghcr.io/llmjob/operator@{OPERATOR.digest}", [OPERATOR]) is OPERATOR
    assert resolve("ghcr.io/llmjob/operator:0.2.0", [OPERATOR]) is None
    assert resolve("ghcr.io/llmjob/operator", [OPERATOR]) is None  # :latest was not built
    assert resolve("ghcr.io/llmjob/operator@sha256:" + "3" * 64, [OPERATOR]) is None


def test_the_image_config_is_read_as_an_oci_config() -> None:
    assert OPERATOR.entrypoint == ["llmjob-operator"]
    assert OPERATOR.cmd == []
    assert OPERATOR.env == {"A": "1", "B": "x=y"}
    assert OPERATOR.user == "65532:65532"


def test_command_and_args_merge_with_entrypoint_and_cmd_as_kubernetes_does() -> None:
    entrypoint, cmd = ["tini", "--", "launch"], ["--help"]
    assert container_command(entrypoint, cmd, [], []) == ["tini", "--", "launch", "--help"]
    assert container_command(entrypoint, cmd, [], ["run"]) == ["tini", "--", "launch", "run"]
    assert container_command(entrypoint, cmd, ["sh"], []) == ["sh"]
    assert container_command(entrypoint, cmd, ["sh"], ["-c", "x"]) == ["sh", "-c", "x"]
    assert container_command([], [], [], []) == []


def test_image_users_are_numeric_or_left_to_the_images_passwd() -> None:
    assert image_user_ids("") == (0, None)
    assert image_user_ids("1000") == (1000, None)
    assert image_user_ids("65532:65532") == (65532, 65532)
    assert image_user_ids("llmjob") == (None, None)
    assert image_user_ids("llmjob:100") == (None, 100)
