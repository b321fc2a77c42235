"""Example budgets for the fuzz tests: small under `make test`, 100 times larger under `make fuzz`.

`make fuzz` loads the `fuzz` hypothesis profile (registered in tests/conftest.py), whose
`max_examples` is 100 times the default profile's; each fuzz test scales its own CI budget by
the same ratio.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings

_DEFAULT_MAX_EXAMPLES = 100


def fuzz_settings(ci_examples: int, **overrides: Any) -> settings:
    """Settings with `ci_examples` examples, scaled by the active profile."""
    scale = settings().max_examples / _DEFAULT_MAX_EXAMPLES
    return settings(
        max_examples=max(1, round(ci_examples * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **overrides,
    )
