"""`python -m jobs.vacuum ...` = `securevqa vacuum ...` (for `ray job submit --working-dir . -- python -m jobs.vacuum`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["vacuum", *sys.argv[1:]]))
