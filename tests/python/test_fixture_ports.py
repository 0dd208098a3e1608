"""The broker fixture under a port race: the port it picks is already another broker's.

Another process can take the picked port before our broker binds it. Our broker must then
refuse to start (not join the other's SO_REUSEPORT group), and the fixture must neither take
the other broker's CONNACK for ours nor give up: it starts ours again on another port.
"""

import conftest
from conftest import Broker


def test_a_port_taken_by_another_broker_is_retried_not_mistaken_for_ours(monkeypatch):
    other = Broker()
    try:
        real_free_port = conftest.free_port
        picks = iter([other.port])
        # The first pick is the other broker's port (as if it had bound it meanwhile).
        monkeypatch.setattr(conftest, "free_port", lambda: next(picks, None) or real_free_port())
        ours = Broker()
        try:
            assert ours.port != other.port
            assert ours.process.poll() is None, "our broker runs"
            assert conftest.holds_port(ours.log_tail(limit=1 << 20), ours.port)
            assert conftest.answers_connect(ours.port)
            assert other.process.poll() is None, "the other broker is untouched"
        finally:
            ours.stop()
            ours.log.close()
    finally:
        other.stop()
        other.log.close()
