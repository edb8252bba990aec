"""Make sure the Debian tools the tests drive are installed: redis-server and redis-cli, and openssl.

The tests start their servers themselves; this only installs what is missing
(with apt-get, when we are root), so `make test` works on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

#: command -> the Debian package that provides it
NEEDED = {"redis-server": "redis-server", "redis-cli": "redis-server", "openssl": "openssl"}


def main() -> int:
    """Install what is missing with apt-get when we may; say what to do otherwise."""
    missing = sorted({package for command, package in NEEDED.items() if shutil.which(command) is None})
    if not missing:
        return 0
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"missing {', '.join(missing)}: installing with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
        return 0
    print(f"The tests need Debian's {', '.join(missing)}: install them (apt-get install {' '.join(missing)}).",
          file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main())
