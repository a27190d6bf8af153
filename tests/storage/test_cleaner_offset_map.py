"""The cleaner's bounded offset map: latest offset per key hash, fixed memory, full signal."""

from __future__ import annotations

import random

import pytest

from qnode.storage.offset_map import SLOT_BYTES, OffsetMap, key_hash


def test_latest_put_wins_and_absent_is_minus_one():
    m = OffsetMap(SLOT_BYTES * 64)
    m.put(key_hash(b"a"), 1)
    m.put(key_hash(b"b"), 2)
    m.put(key_hash(b"a"), 7)
    assert m.get(key_hash(b"a")) == 7
    assert m.get(key_hash(b"b")) == 2
    assert m.get(key_hash(b"c")) == -1
    assert m.size == 2 and m.latest_offset == 7


def test_colliding_slots_probe_and_wrap_around():
    m = OffsetMap(SLOT_BYTES * 8, load_factor=1.0)
    assert m.max_entries == 7  # one slot always free so a miss terminates
    hashes = [8 * i + 7 for i in range(1, 8)]  # all start at the last slot, wrap to 0...
    for i, h in enumerate(hashes):
        m.put(h, 100 + i)
    assert [m.get(h) for h in hashes] == [100 + i for i in range(7)]
    assert m.get(8 * 99 + 7) == -1
    assert m.full
    with pytest.raises(OverflowError):
        m.put(8 * 50 + 7, 1)
    m.put(hashes[3], 999)  # updating a present hash works when full
    assert m.get(hashes[3]) == 999


def test_memory_is_fixed_by_budget_and_full_at_load_factor():
    m = OffsetMap(SLOT_BYTES * 1000, load_factor=0.5)
    assert m.slots == 1000 and m.max_entries == 500
    i = 0
    while not m.full:
        m.put(key_hash(b"k%d" % i), i)
        i += 1
    assert i == 500
    m.clear()
    assert m.size == 0 and m.get(key_hash(b"k1")) == -1 and m.latest_offset == -1


def test_matches_a_dict_model_on_random_keys():
    rnd = random.Random(7)
    m = OffsetMap(SLOT_BYTES * 4096)
    model = {}
    for off in range(3000):
        k = b"key-%d" % rnd.randrange(1500)
        m.put(key_hash(k), off)
        model[k] = off
    assert all(m.get(key_hash(k)) == v for k, v in model.items())
    assert m.size == len(model)


def test_rejects_tiny_budget_and_bad_load_factor():
    with pytest.raises(ValueError):
        OffsetMap(SLOT_BYTES)
    with pytest.raises(ValueError):
        OffsetMap(SLOT_BYTES * 10, load_factor=0)
    assert key_hash(b"") != 0
