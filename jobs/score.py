"""`python -m jobs.score ...` = `securevqa score ...` (for `ray job submit --working-dir . -- python -m jobs.score`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
