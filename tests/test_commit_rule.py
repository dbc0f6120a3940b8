"""The commit rule the engine and the router share (specd/commit_rule.py)."""

from specd.commit_rule import cut, draft_cap


def test_draft_cap_leaves_room_for_the_bonus_token():
    assert [draft_cap(4, remaining) for remaining in (0, 1, 2, 5, 9)] == [0, 0, 1, 4, 4]
    assert draft_cap(0, 100) == 0


def test_cut_at_the_length_and_before_the_stop_token():
    assert cut([5, 6, 7], 2, None) == ([5, 6], False)
    assert cut([5, 2, 7], 3, 2) == ([5], True)
    assert cut([5, 6, 2], 2, 2) == ([5, 6], False)  # the stop token lies beyond the length: not reached
    assert cut([2], 1, 2) == ([], True)
