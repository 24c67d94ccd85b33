"""The ledger's counts when close() gives up waiting (abandon) and answers still come."""

from __future__ import annotations

from mlbench_metrics.delivery import Ledger
from mlbench_metrics.delivery.batch_store import Parcel


def test_an_answer_after_abandon_changes_no_count() -> None:
    # Was: stats showed in_flight=-300 after close() gave up while 300 records were sent.
    ledger = Ledger()
    parcel = Parcel(0, "w-0", 300)
    assert ledger.cut(300, [parcel])
    ledger.flying(300)
    ledger.abandon(0)
    before = ledger.stats(0)
    ledger.flying(-300)  # the answer arrives after all
    ledger.settled(parcel, 300, None)
    after = ledger.stats(0)
    assert after == before
    assert after.in_flight == 0 and after.dropped == {"shutdown": 300}
    assert after.logged == after.stored + after.spooled + after.dropped_total
