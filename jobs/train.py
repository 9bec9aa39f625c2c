"""`python -m jobs.train ...` = `securevqa train ...` (for `ray job submit --working-dir . -- python -m jobs.train`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
