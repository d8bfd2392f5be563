"""The contract tests talk to moto server (the fixtures of tests/integration)."""

from tests.integration.conftest import aws, moto_server  # noqa: F401 - fixtures
