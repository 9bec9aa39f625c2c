"""`python -m jobs.migrate ...` = `securevqa migrate ...` (for `ray job submit --working-dir . -- python -m jobs.migrate`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["migrate", *sys.argv[1:]]))
