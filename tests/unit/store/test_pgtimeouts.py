from __future__ import annotations

from streamer.store.pgtimeouts import Timeouts
from streamer.store.postgres import connection_info


def test_the_timeouts_become_libpq_parameters_and_keep_the_urls_own_options() -> None:
    info = connection_info("postgresql://u@db:5432/flows?options=-c%20search_path%3Dflows", None, Timeouts())
    assert info["connect_timeout"] == 10
    assert (info["keepalives"], info["keepalives_idle"], info["keepalives_interval"], info["keepalives_count"]) == (1, 10, 5, 3)
    assert info["tcp_user_timeout"] == 30_000  # milliseconds
    assert info["options"] == (
        "-c search_path=flows -c statement_timeout=30000 -c idle_in_transaction_session_timeout=30000"
    )
    assert Timeouts(statement_seconds=1.5).libpq()["options"].endswith("idle_in_transaction_session_timeout=1500")
