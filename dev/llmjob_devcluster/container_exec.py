"""Last step of starting a container, run inside the pod's namespaces and root (entered
by nsenter): take the container's user, groups and working directory, then exec its
command with PATH looked up in the container's environment, as a runtime does.

Standard library only: it runs as `python -I container_exec.py SPEC_JSON`.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    working_dir = spec["workingDir"]
    os.makedirs(working_dir, exist_ok=True)
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    os.chdir(working_dir)
    command = spec["command"]
    try:
        os.execvpe(command[0], command, os.environ)
    except OSError as error:
        print(f"llmjob node agent: cannot run {command[0]!r}: {error}", file=sys.stderr)
        sys.exit(127 if isinstance(error, FileNotFoundError) else 126)


if __name__ == "__main__":
    main()
