"""`python -m jobs.rescore ...` = `securevqa rescore ...` (for `ray job submit --working-dir . -- python -m jobs.rescore`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["rescore", *sys.argv[1:]]))
