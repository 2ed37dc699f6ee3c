"""A JetStream delivery reads when its message was stored from its ack subject."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from runner.transport.nats import NatsDelivery

NS = 1_764_590_400_123_456_789


@pytest.mark.parametrize("reply, published", [
    (f"$JS.ACK.KAI-P-V-WF.s0.1.42.7.{NS}.3", NS / 1e9),  # the 9-token form
    (f"$JS.ACK.hub.ACCHASH.KAI-P-V-WF.s0.2.42.7.{NS}.0.r4nd", NS / 1e9),  # domain, account
    ("$JS.ACK.KAI-P-V-WF.s0.1.42.7.notanumber.3", 0.0),
    ("_INBOX.abc.1", 0.0),
    ("", 0.0),
])  # fmt: skip
def test_published_is_the_stored_time_in_the_ack_subject(reply: str, published: float) -> None:
    msg = Msg(None, subject="kai.p.v.wf.s0", reply=reply, data=b"",  # type: ignore[arg-type]
              headers={})
    assert NatsDelivery(msg).published == pytest.approx(published)
