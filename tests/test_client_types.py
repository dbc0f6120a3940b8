"""The SDK's result types: "acceptance rate" means α only (docs/metrics.md)."""

import pytest

from specd.client.types import Usage


def test_accepted_fraction_of_proposed_and_the_deprecated_name():
    usage = Usage(prompt_tokens=3, generated_tokens=10, draft_tokens_proposed=8, draft_tokens_accepted=6,
                  iterations=4)
    assert usage.accepted_fraction_of_proposed == 0.75
    with pytest.warns(DeprecationWarning, match="accepted_fraction_of_proposed"):
        assert usage.acceptance_rate == 0.75
    assert Usage(1, 1, 0, 0, 1).accepted_fraction_of_proposed == 0.0
