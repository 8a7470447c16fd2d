"""The fingerprint of many catalogs that share entries (check and snapshot walk a set's snapshots) is computed from each
entry's JSON made once; it must equal the plain fingerprint byte for byte, for any catalog."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from components.engine import catalog as cat

_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)
_ENTRIES = st.dictionaries(st.text(max_size=10), _VALUES, max_size=6)
_CATALOGS = st.dictionaries(st.text(max_size=24), _ENTRIES, max_size=30)


@settings(max_examples=100, deadline=None)
@given(_CATALOGS)
def test_the_cached_fingerprint_equals_the_plain_one(catalog: dict[str, dict[str, Any]]) -> None:
    assert cat.Fingerprints()(catalog) == cat.fingerprint(catalog)


@settings(max_examples=60, deadline=None)
@given(_CATALOGS, st.lists(st.tuples(st.text(max_size=24), _ENTRIES | st.none()), max_size=8), st.data())
def test_catalogs_sharing_entries_walked_forward_fingerprint_as_the_plain_one(
    first: dict[str, dict[str, Any]], changes: list[tuple[str, dict[str, Any] | None]], data: st.DataObject
) -> None:
    """As a set's snapshots: each a copy of the one before with some entries replaced or gone, entries shared."""
    fingerprints = cat.Fingerprints()
    catalog = dict(first)
    assert fingerprints(catalog) == cat.fingerprint(catalog)
    for key, entry in changes:
        catalog = dict(catalog)
        if entry is None:
            catalog.pop(key, None)
        else:
            catalog[key] = entry
        if catalog and data.draw(st.booleans()):  # an entry equal in value but a new object
            k = data.draw(st.sampled_from(sorted(catalog)))
            catalog[k] = dict(catalog[k])
        assert fingerprints(catalog) == cat.fingerprint(catalog)


@settings(max_examples=80, deadline=None)
@given(_CATALOGS, st.lists(st.lists(st.tuples(st.text(max_size=24), _ENTRIES | st.none()), max_size=5), max_size=6), st.data())
def test_a_running_fingerprint_advanced_by_each_steps_delta_equals_the_plain_one(
    first: dict[str, dict[str, Any]], steps: list[list[tuple[str, dict[str, Any] | None]]], data: st.DataObject
) -> None:
    """As the step runner advances it: from the catalog it last hashed, by the keys a step's delta names (a key named
    whose entry did not change, and a catalog it did not hash last, are allowed: the latter is hashed from scratch)."""
    running = cat.RunningFingerprint()
    previous: dict[str, dict[str, Any]] | None = None
    catalog = dict(first)
    assert running(catalog) == cat.fingerprint(catalog)
    previous = catalog
    for changes in steps:
        catalog = dict(previous)
        changed = set()
        for key, entry in changes:
            changed.add(key)
            if entry is None:
                catalog.pop(key, None)
            else:
                catalog[key] = entry
        if catalog and data.draw(st.booleans()):  # a key named in the delta though its entry stayed the same
            changed.add(data.draw(st.sampled_from(sorted(catalog))))
        stale = data.draw(st.booleans())  # advanced from a catalog it did not hash last: must start over
        assert running(catalog, dict(previous) if stale else previous, changed) == cat.fingerprint(catalog)
        previous = catalog
