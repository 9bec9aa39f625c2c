"""`python -m jobs.attack ...` = `securevqa attack ...` (for `ray job submit --working-dir . -- python -m jobs.attack`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["attack", *sys.argv[1:]]))
