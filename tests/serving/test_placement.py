"""Placement of a request's KV on replicas (router/replicas.py): least pinned, drafts dealt to targets."""

from dataclasses import dataclass, field

from specd.router.replicas import drafts_for, least_pinned


@dataclass
class R:
    address: str
    pinned: set[str] = field(default_factory=set)


def test_least_pinned_then_by_address():
    assert least_pinned([R("b"), R("a", {"x"}), R("c")]).address == "b"


def test_drafts_are_dealt_to_targets():
    targets = [R("t1"), R("t0")]
    drafts = [R(f"d{i}") for i in (3, 1, 0, 2)]
    assert [d.address for d in drafts_for("t0", targets, drafts)] == ["d0", "d2"]
    assert [d.address for d in drafts_for("t1", targets, drafts)] == ["d1", "d3"]
    # fewer drafts than targets: each target gets one, shared round-robin
    assert [d.address for d in drafts_for("t1", targets, [R("d0")])] == ["d0"]
    # a target the pool does not know (gone meanwhile): any draft
    assert len(drafts_for("t9", targets, drafts)) == 4
