"""`python -m jobs.extract_inter ...` = `securevqa extract-inter ...` (for `ray job submit --working-dir . -- python -m jobs.extract_inter`)."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract-inter", *sys.argv[1:]]))
