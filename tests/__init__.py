"""The test suite. A package, so that pytest puts the repository root on sys.path and every test imports
its helpers one way: `from tests.helpers import videos as tv`, `from tests.helpers.micro import ...`."""
