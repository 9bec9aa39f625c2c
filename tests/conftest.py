"""Fixtures that start something (a local Ray, moto's S3 server, an HTTP server), and the `slow` rule.

A test is `slow` when it starts Ray, a subprocess or a server, or computes for more than ~5 s: every test
using one of SLOW_FIXTURES is marked here; the others carry `@pytest.mark.slow` (or `pytestmark`).
`make test-fast` (`pytest -m "not slow"`) skips them; `make test` runs everything.
Helpers that are not fixtures are imported from the tests.helpers package (tests/helpers/__init__.py).
"""

import os

# Before torch loads OpenMP (and for every process the tests start): a thread waiting for the others
# sleeps instead of spinning. Spinning, two intra-op threads on two cores that another process also uses
# (a CI runner's neighbours, a training run) made small-model tests 15-30x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.http_server import FileServer  # noqa: E402

# Every Ray the tests start (here and in subprocesses) binds to 127.0.0.1, never the host's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Two cores: keep intra-op threads predictable and tests quiet; one each when pytest-xdist runs
# workers side by side (`make test-fast` uses one worker per core).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# Fixtures that start Ray or a server (directly or through another fixture): their tests are `slow`.
SLOW_FIXTURES = frozenset({"ray_local", "s3_endpoint", "http_catalog"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on loopback (moto's server), reached through s3fs like production."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole test session (ray.init takes seconds)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # address "local": a Ray of its own, never one already running on this machine (ray.init joins that one when
    # given no address, and refuses num_cpus; jobs/cli.py RAY_ADDRESS_HELP). Not RAY_ADDRESS=local for the whole
    # session: ray.job_submission's client reads it too, before the address it is given.
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def http_catalog(tmp_path):
    """tmp_path served at the URL this yields by a plain HTTP server on loopback (a CDN catalog): byte
    ranges and Last-Modified, no ETag; files under /noversion/ come without Last-Modified either."""
    with FileServer(tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory):
    """The micro model's checkpoint (tests/helpers/micro.py), for `ModelSpec(checkpoint=...)` and `--checkpoint`."""
    from tests.helpers.micro import micro_checkpoint

    return micro_checkpoint(tmp_path_factory.mktemp("micro") / "micro.pt")
