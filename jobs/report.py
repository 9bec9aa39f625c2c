"""`python -m jobs.report ...` = `securevqa report ...` (for `ray job submit --working-dir . -- python -m jobs.report`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
