"""`python -m pipeline.demo`: build the demo set or the training set (see `--help`)."""

from pipeline.demo.build import main

raise SystemExit(main())
