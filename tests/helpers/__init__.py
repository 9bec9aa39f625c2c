"""Helpers the tests share, imported as `from tests.helpers import videos as tv` or
`from tests.helpers.<module> import <name>` (bench/bench_scale.py uses videos and micro too):

- videos: small synthetic videos (every frame carries its index) and broken files of each kind
- micro: a micro SecureVQA with every branch of the real architecture, and its checkpoint
- procs: the CLI as a separate process, and killing its process tree as a crash would
- http_server: a plain HTTP file server on loopback (a CDN catalog); tests use the `http_catalog` fixture
- crash_udf: a stage-1 actor that dies like a native decoder crash (pickled by value for Ray's workers)
- cluster_sim: a multi-node Ray cluster in one machine, run as `python -m tests.helpers.cluster_sim DIR`

Fixtures that start something (Ray, moto's S3 server, the HTTP server) live in tests/conftest.py, which
marks every test using them `slow`.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"  # the reference implementation's golden outputs (README)
