"""The near-duplicate search (multi-index hashing) against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimuf.data import audit
from chimuf.data.audit import close_pairs, hash_bands, near_components


def brute_force_groups(hashes: np.ndarray, max_distance: int) -> list[list[int]]:
    """Every pair compared, then a plain union-find: the reference (quadratic, test-only)."""
    values = hashes.tolist()
    parent = list(range(len(values)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if bin(values[i] ^ values[j]).count("1") <= max_distance:
                parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(len(values)):
        members.setdefault(find(i), []).append(i)
    return sorted(m for m in members.values() if len(m) > 1)


def groups(component: np.ndarray) -> list[list[int]]:
    members: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        members.setdefault(c, []).append(i)
    return sorted(m for m in members.values() if len(m) > 1)


def planted(n_centres: int, copies: int, max_flips: int, seed: int) -> np.ndarray:
    """Random centres, each with `copies` near copies (0..max_flips bits flipped), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64 - 1, n_centres, dtype=np.uint64, endpoint=True)
    out = [centres]
    for _ in range(copies):
        flips = np.zeros(n_centres, dtype=np.uint64)
        for _ in range(rng.integers(0, max_flips + 1)):
            flips ^= np.uint64(1) << rng.integers(0, 64, n_centres).astype(np.uint64)
        out.append(centres ^ flips)
    hashes = np.concatenate(out)
    return hashes[rng.permutation(len(hashes))]


@pytest.mark.parametrize("max_distance", [0, 1, 4, 7, 12, 20])
def test_planted_near_duplicates_give_the_brute_force_groups(max_distance):
    hashes = planted(n_centres=150, copies=3, max_flips=max_distance + 3, seed=max_distance)
    assert groups(near_components(hashes, max_distance)) == brute_force_groups(hashes, max_distance)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=40), st.integers(0, 32),
       st.lists(st.integers(0, 63), max_size=8))
def test_groups_match_brute_force_for_any_hashes_and_distance(values, max_distance, flips):
    # near copies of the first hash (flipping the listed bits one by one) make close pairs likely
    if values:
        for bit in flips:
            values.append(values[-1] ^ (1 << bit))
    hashes = np.array(values, dtype=np.uint64)
    assert groups(near_components(hashes, max_distance)) == brute_force_groups(hashes, max_distance)


def test_every_close_pair_is_reported_once_across_bands():
    hashes = planted(n_centres=100, copies=4, max_flips=6, seed=3)
    rows, cols = close_pairs(hashes, 4)
    pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
    values = hashes.tolist()
    expected = {(i, j) for i in range(len(values)) for j in range(i + 1, len(values))
                if bin(values[i] ^ values[j]).count("1") <= 4}
    assert len(pairs) == len(set(pairs)) and set(pairs) == expected


@pytest.mark.parametrize("max_distance", [0, 4, 11, 14, 15, 32, 63, 64])
def test_bands_cover_the_64_bits_once_with_one_more_band_than_the_distance(max_distance):
    bands = hash_bands(max_distance)
    covered = 0
    for shift, width in bands:
        mask = ((1 << width) - 1) << shift
        assert covered & mask == 0
        covered |= mask
    if bands == [(0, 0)]:  # bands this narrow would cost more than all pairs: one bucket instead
        assert max_distance >= 15
    else:
        assert covered == 2**64 - 1 and len(bands) == max_distance + 1


def test_identical_hashes_cost_no_pairs_and_form_one_group(monkeypatch):
    hashes = np.array([7] * 5000 + [0xFFFF << 48, (0xFFFF << 48) + 1], dtype=np.uint64)
    seen = []
    real = audit.close_pair_chunks

    def counting(h, d):
        seen.append(len(h))
        yield from real(h, d)

    monkeypatch.setattr(audit, "close_pair_chunks", counting)
    assert groups(near_components(hashes, 4)) == [list(range(5000)), [5000, 5001]]
    assert seen == [3]  # only the three distinct hashes were searched


def test_components_are_folded_in_when_the_edge_budget_fills(monkeypatch):
    hashes = planted(n_centres=80, copies=5, max_flips=4, seed=5)
    expected = brute_force_groups(hashes, 4)
    monkeypatch.setattr(audit, "EDGE_BUDGET", 7)
    monkeypatch.setattr(audit, "PAIR_CHUNK", 13)
    assert groups(near_components(hashes, 4)) == expected


def test_a_hundred_thousand_hashes_stay_in_small_memory():
    import tracemalloc

    hashes = planted(n_centres=25_000, copies=3, max_flips=5, seed=7)  # 100 000 hashes
    tracemalloc.start()
    near_components(hashes, 4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20  # the all-pairs search needed a 1 024 × N uint64 block: 0.8 GB
