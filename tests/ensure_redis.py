"""Make sure Debian's redis-server is installed before the cluster tests run (they start it themselves)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    """Install redis-server with apt-get when it is missing and we may; say what to do otherwise."""
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return 0
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server is missing: installing it with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
        return 0
    print("The cluster tests need redis-server and redis-cli on PATH: install Debian's redis-server.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
