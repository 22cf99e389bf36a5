"""Per-sample seeds: the scheme is fixed (stored datasets resume with it) and planning ahead changes no state."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dpx.core.producer import PLAN_AHEAD, SampleRng, resolve_seed

MASK = 2**64 - 1


def _mix(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_state(key: np.ndarray, sample_id: int, stream: int, attempt: int) -> list[int]:
    """The documented scheme, one sample at a time in plain integers."""
    a = _mix(int(key[0]) ^ sample_id)
    b = _mix(int(key[1]) ^ ((stream << 32) | attempt))
    c = _mix(a ^ b)
    counter = 1
    for _ in range(12):
        mixed = (a + b + counter) & MASK
        counter += 1
        a = b ^ (b >> 11)
        b = (c + (c << 3)) & MASK
        c = ((((c << 24) | (c >> 40)) & MASK) + mixed) & MASK
    return [a, b, c, counter, 0]


def test_states_follow_the_documented_scheme():
    key = resolve_seed(1234)[1]
    rng = SampleRng(key)
    for sample_id, stream, attempt in [(0, 0, 0), (7, 1, 0), (123_456_789, 2, 3), (2**40 + 5, 2**32 - 1, 0)]:
        assert rng.plan(np.array([sample_id]), stream, attempt)[0].tolist() == reference_state(key, sample_id, stream, attempt)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * PLAN_AHEAD), st.integers(1, 300), st.sampled_from([0, 1, 2]),
                          st.sampled_from([0, 0, 0, 1]), st.booleans()), min_size=1, max_size=12))
def test_planned_states_equal_fresh_ones_whatever_the_order_of_calls(calls):
    rng = SampleRng(resolve_seed(99)[1])
    for first, count, stream, attempt, scattered in calls:
        ids = np.arange(first, first + count) if not scattered else np.arange(first, first + count)[::-1] * 37
        np.testing.assert_array_equal(rng.plan(ids, stream, attempt), rng.states(ids, stream, attempt))


def test_seek_puts_the_generator_at_the_sample_stream():
    rng = SampleRng(resolve_seed(5)[1])
    rng.set(rng.plan(np.arange(10, 20))[3])
    expected = rng.generator.random(4)
    rng.seek(13)
    np.testing.assert_array_equal(rng.generator.random(4), expected)
