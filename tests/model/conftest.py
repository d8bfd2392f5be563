"""The contract tests talk to moto server, the fleet's model to a real PostgreSQL (the fixtures of tests/integration)."""

from tests.integration.conftest import aws, moto_server, postgres_server  # noqa: F401 - fixtures
