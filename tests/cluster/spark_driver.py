"""Run several ``mlscale`` commands in one process, so they share one Spark driver (and one executor
launch on the cluster) instead of starting a JVM each: ``python spark_driver.py "features apply" ...``.
Each command's output goes to stdout after a line ``=== <command>``; the first failure exits 2."""

from __future__ import annotations

import shlex
import sys

from mlscale.cli import cli

for command in sys.argv[1:]:
    print(f"=== {command}", flush=True)
    try:
        cli.main(shlex.split(command), standalone_mode=False)
    except Exception as exc:  # the CLI's own errors and anything else: one line, then stop
        print(f"error in {command!r}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
