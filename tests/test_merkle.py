"""RFC 9162 Merkle tree: known answers, an independent recursive reference, tamper checks."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xhub.protocol.log.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    NodeKey,
    ProofError,
    RootBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_to_store,
    root_hash,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference
# Written straight from the recursive definitions of RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH)
# and §2.1.4.1 (PROOF / SUBPROOF), over explicit lists of entries.  It shares no code with
# hub.audit.merkle.  D[start:end] is passed as the two bounds into a fixed entry list so that
# MTH can be memoised; every definition below is the RFC's, case by case.


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    def __init__(self, entries: Sequence[bytes]) -> None:
        self.d = list(entries)
        self.mth = cache(self._mth)

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return _sha256(b"")
        if n == 1:
            return _sha256(b"\x00" + self.d[start])
        k = _k(n)
        return _sha256(b"\x01" + self.mth(start, start + k) + self.mth(start + k, end))

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        """PATH(m, D[start:end]), m relative to start."""
        n = end - start
        if n == 1:
            return []
        k = _k(n)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, b: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], b)."""
        n = end - start
        if m == n:
            return [] if b else [self.mth(start, end)]
        k = _k(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, b), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n])."""
        return self.subproof(m, 0, n, True)


MAX_N = 64
ENTRIES = [f"entry {i}".encode() * (i % 3 + 1) for i in range(MAX_N)]
REF = Reference(ENTRIES)
LEAVES = [_sha256(b"\x00" + e) for e in ENTRIES]


def _store(leaves: Sequence[bytes]) -> MemoryNodeStore:
    store = MemoryNodeStore()
    store.append(leaves)
    return store


STORE = _store(LEAVES)


class CountingReader:
    """Wraps a store, counting get_nodes calls and keys read."""

    def __init__(self, inner: MemoryNodeStore) -> None:
        self.inner = inner
        self.calls = 0
        self.keys = 0

    def get_node(self, level: int, index: int) -> bytes:
        raise AssertionError("the Merkle code should only use get_nodes")

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        assert keys, "get_nodes called with no keys"
        self.calls += 1
        self.keys += len(keys)
        return self.inner.get_nodes(keys)


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --------------------------------------------------------------------------- known answers
# RFC 6962 test data as published by the CT / transparency-dev projects
# (github.com/transparency-dev/merkle testonly/constants.go and proof/verify_test.go).

CT_INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Hashes of all complete subtrees of the 8-leaf tree, by (level, index): the storage model.
CT_NODES = {
    (0, 0): "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    (0, 1): "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    (0, 2): "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    (0, 3): "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    (0, 4): "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    (0, 5): "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    (0, 6): "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    (0, 7): "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    (1, 0): "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    (1, 1): "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    (1, 2): "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    (1, 3): "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    (2, 0): "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    (2, 1): "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    (3, 0): "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
N = CT_NODES
# (leaf index, tree size, PATH)
CT_INCLUSION = [
    (0, 1, []),
    (0, 8, [N[0, 1], N[1, 1], N[2, 1]]),
    (5, 8, [N[0, 4], N[1, 3], N[2, 0]]),
    (2, 3, [N[1, 0]]),
    (1, 5, [N[0, 0], N[1, 1], N[0, 4]]),
]
# (old size, new size, PROOF)
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [N[0, 1], N[1, 1], N[2, 1]]),
    (6, 8, [N[1, 2], N[1, 3], N[2, 0]]),
    (2, 5, [N[1, 1], N[0, 4]]),
    (6, 7, [N[1, 2], N[0, 6], N[2, 0]]),
]


def test_empty_tree_hash_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert root_hash(0, MemoryNodeStore()) == EMPTY_ROOT


def test_hash_functions_use_rfc_prefixes() -> None:
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha256(b"\x01" + b"L" * 32 + b"R" * 32)
    assert leaf_hash(b"").hex() == CT_ROOTS[1]


@pytest.fixture(scope="module")
def ct_store() -> MemoryNodeStore:
    return _store([leaf_hash(e) for e in CT_INPUTS])


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_root_hashes(ct_store: MemoryNodeStore, size: int) -> None:
    assert root_hash(size, ct_store).hex() == CT_ROOTS[size]


def test_ct_stored_nodes_are_exactly_the_complete_subtrees(ct_store: MemoryNodeStore) -> None:
    assert {key: value.hex() for key, value in ct_store.nodes().items()} == CT_NODES


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_proofs(
    ct_store: MemoryNodeStore, index: int, size: int, path: list[str]
) -> None:
    proof = inclusion_proof(index, size, ct_store)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size])
    verify_inclusion(leaf_hash(CT_INPUTS[index]), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_consistency_proofs(
    ct_store: MemoryNodeStore, old: int, new: int, path: list[str]
) -> None:
    proof = consistency_proof(old, new, ct_store)
    assert [p.hex() for p in proof] == path
    verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), proof)


# --------------------------------------------------------------------------- every tree size


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_root_hash_matches_reference(n: int) -> None:
    assert root_hash(n, STORE) == REF.mth(0, n)


def _inclusion_probes(
    index: int, n: int, proof: list[bytes], root: bytes
) -> list[tuple[str, bytes, int, int, list[bytes], bytes]]:
    """(description, leaf hash, index, size, proof, root) that must all be rejected."""
    leaf = LEAVES[index]
    probes = [
        ("wrong root", leaf, index, n, proof, _flip(root)),
        ("root of the empty tree", leaf, index, n, proof, EMPTY_ROOT),
        ("wrong leaf", _flip(leaf), index, n, proof, root),
        ("index == size", leaf, n, n, proof, root),
        ("negative index", leaf, -1, n, proof, root),
        ("size 0", leaf, index, 0, proof, root),
        ("trailing garbage", leaf, index, n, [*proof, root], root),
        ("preceding garbage", leaf, index, n, [root, *proof], root),
        ("short hash", leaf, index, n, [*proof[:-1], proof[-1][:31]] if proof else [b""], root),
    ]
    for i in range(len(proof)):
        for bit in (0, 7):
            bad = list(proof)
            bad[i] = _flip(bad[i], bit)
            probes.append((f"proof[{i}] bit {bit} flipped", leaf, index, n, bad, root))
    if proof:
        probes.append(("truncated", leaf, index, n, proof[:-1], root))
    # Another index of the same tree: the same proof never proves the leaf is there too.
    for other in range(n):
        if other != index:
            probes.append((f"index {other}", leaf, other, n, proof, root))
    # Another tree size, with that tree's real root: the proof is for a different tree.
    for other_n in {n - 1, n + 1, 2 * n, n // 2} - {n}:
        if index < other_n <= MAX_N and REF.path(index, 0, other_n) != proof:
            probes.append((f"size {other_n}", leaf, index, other_n, proof, REF.mth(0, other_n)))
    return probes


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_inclusion_proofs_for_every_leaf(n: int) -> None:
    root = REF.mth(0, n)
    for index in range(n):
        expected = REF.path(index, 0, n)
        reader = CountingReader(STORE)
        proof = inclusion_proof(index, n, reader)
        assert proof == expected, (index, n)
        assert reader.calls == (1 if expected else 0)
        assert reader.keys <= 2 * n.bit_length()
        verify_inclusion(LEAVES[index], index, n, proof, root)
        for description, leaf, i, size, bad_proof, bad_root in _inclusion_probes(
            index, n, proof, root
        ):
            with pytest.raises(ProofError):
                verify_inclusion(leaf, i, size, bad_proof, bad_root)
                pytest.fail(f"leaf {index} of {n}: accepted with {description}")


def _consistency_probes(
    old: int, n: int, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """(description, old size, new size, old root, new root, proof) that must be rejected."""
    old_root, new_root = REF.mth(0, old), REF.mth(0, n)
    probes = [
        ("wrong old root", old, n, _flip(old_root), new_root, proof),
        ("wrong new root", old, n, old_root, _flip(new_root), proof),
        ("swapped roots", old, n, new_root, old_root, proof),
        ("empty proof", old, n, old_root, new_root, []),
        ("trailing old root", old, n, old_root, new_root, [*proof, old_root]),
        ("trailing new root", old, n, old_root, new_root, [*proof, new_root]),
        ("preceding old root", old, n, old_root, new_root, [old_root, *proof]),
        ("preceding proof[0]", old, n, old_root, new_root, [proof[0], *proof]),
        ("truncated", old, n, old_root, new_root, proof[:-1]),
        ("short hash", old, n, old_root, new_root, [*proof[:-1], proof[-1][:31]]),
        ("time travel", n, old, new_root, old_root, proof),
    ]
    for i in range(len(proof)):
        for bit in (0, 4):
            bad = list(proof)
            bad[i] = _flip(bad[i], bit)
            probes.append((f"proof[{i}] bit {bit} flipped", old, n, old_root, new_root, bad))
    # Other sizes, with the real roots of those trees: this proof is not theirs.
    for other_old in range(1, n):
        if other_old != old and REF.proof(other_old, n) != proof:
            probes.append(
                (f"old size {other_old}", other_old, n, REF.mth(0, other_old), new_root, proof)
            )
    for other_n in {n - 1, n + 1, 2 * n, n // 2}:
        if old < other_n <= MAX_N and other_n != n and REF.proof(old, other_n) != proof:
            probes.append(
                (f"new size {other_n}", old, other_n, old_root, REF.mth(0, other_n), proof)
            )
    return probes


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_consistency_proofs_for_every_old_size(n: int) -> None:
    new_root = REF.mth(0, n)
    for old in range(1, n + 1):
        expected = REF.proof(old, n)
        reader = CountingReader(STORE)
        proof = consistency_proof(old, n, reader)
        assert proof == expected, (old, n)
        assert reader.calls == (1 if expected else 0)
        assert reader.keys <= 2 * n.bit_length() + 1
        old_root = REF.mth(0, old)
        verify_consistency(old, n, old_root, new_root, proof)
        if old == n:
            assert proof == []
            continue
        for description, o, s, r1, r2, bad_proof in _consistency_probes(old, n, proof):
            with pytest.raises(ProofError):
                verify_consistency(o, s, r1, r2, bad_proof)
                pytest.fail(f"{old} -> {n}: accepted with {description}")


def test_subtree_hash_of_arbitrary_ranges() -> None:
    for start in range(0, 41):
        for end in range(start, 41):
            assert subtree_hash(start, end, STORE) == REF.mth(start, end), (start, end)


# --------------------------------------------------------------------------- edge cases

_ROOT5 = REF.mth(0, 5)
_H = b"\x42" * 32


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "ok"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 5, EMPTY_ROOT, _ROOT5, [], True),
        (5, 5, _ROOT5, _ROOT5, [], True),
        (0, 5, _H, _ROOT5, [], False),  # the empty tree has exactly one root
        (0, 5, EMPTY_ROOT, _ROOT5, [_H], False),  # proof from 0 must be empty
        (5, 5, _ROOT5, _H, [], False),  # one size, two roots
        (5, 5, _ROOT5, _ROOT5, [_ROOT5], False),  # proof between equal sizes must be empty
        (5, 4, _ROOT5, _ROOT5, [], False),  # shrinking
        (-1, 5, EMPTY_ROOT, _ROOT5, [], False),
        (1, 2, _H, _H, [], False),  # a real step needs a proof
        (5, 5, b"short", b"short", [], False),  # hashes are 32 bytes
    ],
)
def test_verify_consistency_trivial_cases(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes], ok: bool
) -> None:
    if ok:
        verify_consistency(old, new, old_root, new_root, proof)
    else:
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, proof)


@pytest.mark.parametrize(
    ("index", "size", "leaf", "root"),
    [
        (0, 1, LEAVES[0], LEAVES[0]),  # a one-leaf tree's root is its leaf hash
        (0, 1, b"", LEAVES[0]),
        (0, 1, LEAVES[0], b""),
        (1, 1, LEAVES[0], LEAVES[0]),
        (0, 0, LEAVES[0], EMPTY_ROOT),
    ],
)
def test_verify_inclusion_single_entry(index: int, size: int, leaf: bytes, root: bytes) -> None:
    if (index, size, leaf, root) == (0, 1, LEAVES[0], LEAVES[0]):
        verify_inclusion(leaf, index, size, [], root)
    else:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, [], root)


def test_proof_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="does not lead to the root hash"):
        verify_inclusion(LEAVES[0], 0, 2, [LEAVES[1]], _H)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: inclusion_proof(5, 5, STORE), "not in a tree of size 5"),
        (lambda: inclusion_proof(-1, 5, STORE), "not in a tree"),
        (lambda: consistency_proof(6, 5, STORE), "larger than new size"),
        (lambda: consistency_proof(-1, 5, STORE), ">= 0"),
        (lambda: root_hash(-1, STORE), ">= 0"),
        (lambda: subtree_hash(3, 2, STORE), "end 2 < start 3"),
        (lambda: nodes_to_store(0, [b"short"], MemoryNodeStore()), "not 32"),
    ],
)
def test_bad_arguments_raise_value_error(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()


def test_reading_beyond_the_stored_tree_raises_key_error() -> None:
    small = _store(LEAVES[:5])
    with pytest.raises(KeyError):
        root_hash(6, small)
    with pytest.raises(KeyError):
        inclusion_proof(0, 8, small)
    with pytest.raises(KeyError):
        small.get_node(1, 2)  # [4, 6) is not complete at size 5


# --------------------------------------------------------------------------- appending


def _complete_keys(n: int) -> set[NodeKey]:
    return {(level, index) for level in range(n.bit_length()) for index in range(n >> level)}


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_store_the_same_nodes_as_one_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.randint(150, 300)
    leaves = [_sha256(b"\x00" + rng.randbytes(rng.randint(0, 20))) for _ in range(total)]

    one_by_one = MemoryNodeStore()
    for leaf in leaves:
        one_by_one.append([leaf])

    batched = MemoryNodeStore()
    size = 0
    while size < total:
        batch = leaves[size : size + rng.choice([0, 1, 1, 2, 3, 5, 8, 13, 31, 64])]
        reader = CountingReader(batched)
        new_nodes = nodes_to_store(size, batch, reader)
        assert reader.calls <= 1
        assert reader.keys <= size.bit_length()
        keys = {(level, index) for level, index, _ in new_nodes}
        assert len(keys) == len(new_nodes)
        assert keys == _complete_keys(size + len(batch)) - _complete_keys(size)
        batched.put_nodes(new_nodes)
        batched.size = size = size + len(batch)
        assert root_hash(size, batched) == root_hash(size, one_by_one)

    assert batched.nodes() == one_by_one.nodes()
    for n in (1, total // 2, total):
        assert root_hash(n, batched) == _mth_of_leaf_hashes(leaves[:n])


def _mth_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH where the leaf hashes are already computed."""
    if len(hashes) == 1:
        return hashes[0]
    k = _k(len(hashes))
    return _sha256(b"\x01" + _mth_of_leaf_hashes(hashes[:k]) + _mth_of_leaf_hashes(hashes[k:]))


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12))
def test_any_batch_split_gives_the_same_tree(batch_sizes: list[int]) -> None:
    total = sum(batch_sizes)
    leaves = [_sha256(i.to_bytes(4, "big")) for i in range(total)]
    store = MemoryNodeStore()
    for size in batch_sizes:
        store.append(leaves[store.size : store.size + size])
    assert store.size == total
    assert store.nodes() == _store(leaves).nodes()
    assert set(store.nodes()) == _complete_keys(total)
    if total:
        assert root_hash(total, store) == _mth_of_leaf_hashes(leaves)


def test_large_tree_proofs_read_few_nodes() -> None:
    n = 5000
    leaves = [_sha256(i.to_bytes(4, "big")) for i in range(n)]
    store = _store(leaves)
    root = _mth_of_leaf_hashes(leaves)
    for index in (0, 1, 2047, 2048, 4095, 4096, 4999):
        reader = CountingReader(store)
        proof = inclusion_proof(index, n, reader)
        assert (reader.calls, reader.keys <= 2 * n.bit_length()) == (1, True)
        verify_inclusion(leaves[index], index, n, proof, root)
    for old in (1, 1000, 2048, 3333, 4999):
        reader = CountingReader(store)
        proof = consistency_proof(old, n, reader)
        assert (reader.calls, reader.keys <= 2 * n.bit_length() + 1) == (1, True)
        verify_consistency(old, n, root_hash(old, store), root, proof)
    reader = CountingReader(store)
    assert root_hash(n, reader) == root
    assert (reader.calls, reader.keys) == (1, bin(n).count("1"))


@pytest.mark.parametrize("size", [*range(65), 1000, 1023, 1024, 1025])
def test_root_builder_matches_stored_tree(size: int) -> None:
    leaves = [leaf_hash(b"entry %d" % i) for i in range(size)]
    store = MemoryNodeStore()
    store.append(leaves)
    builder = RootBuilder()
    for leaf in leaves:
        builder.add(leaf)
    assert builder.size == size
    assert builder.root() == (root_hash(size, store) if size else EMPTY_ROOT)
