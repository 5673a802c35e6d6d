"""RFC 9162 (Certificate Transparency v2) Merkle tree: hashing, proofs and their verification.

Storage model (as in Trillian / Go ``tlog``): the log persists the hash of every *complete*
perfect subtree, keyed ``(level, index)`` -- the subtree of ``2**level`` leaves that starts at
leaf ``index * 2**level`` (level 0 holds the leaf hashes).  Nodes are written once, when the
subtree fills up, and never change; any tree size's root and every proof are combinations of
O(log n) such nodes, fetched with one :meth:`NodeReader.get_nodes` call per operation.

This module is pure and storage-agnostic: callers supply a :class:`NodeReader` (a database
table, :class:`MemoryNodeStore`, ...) and persist what :func:`nodes_to_store` returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryNodeStore",
    "NodeKey",
    "NodeReader",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_to_store",
    "root_hash",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root hash of the empty tree, SHA-256 of the empty string (RFC 9162 §2.1.1)."""

NodeKey = tuple[int, int]
"""``(level, index)``: the perfect subtree of leaves ``[index << level, (index + 1) << level)``."""


class ProofError(ValueError):
    """An inclusion or consistency proof does not verify."""


class NodeReader(Protocol):
    """Read access to the stored hashes of complete perfect subtrees (see the module docstring).

    Both methods raise :class:`KeyError` (or another :class:`LookupError`) for a node that
    is not stored.  This module only calls :meth:`get_nodes`, never with an empty sequence.
    """

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of ``2**level`` leaves from leaf ``index * 2**level``."""
        ...

    def get_nodes(self, keys: Sequence[NodeKey]) -> Sequence[bytes]:
        """Hashes for ``keys`` (``(level, index)`` pairs), in the same order (one round trip)."""
        ...


# --------------------------------------------------------------------------- hashing


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one log entry."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# --------------------------------------------------------------------------- internals


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _perfect_key(start: int, end: int) -> NodeKey | None:
    """The stored node covering exactly ``[start, end)``, if that is an aligned perfect subtree."""
    n = end - start
    if n > 0 and n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return level, start >> level
    return None


def _collect_keys(start: int, end: int, out: list[NodeKey]) -> None:
    """Append the stored nodes that MTH(D[start:end]) is computed from (RFC 9162 recursion)."""
    key = _perfect_key(start, end)
    if key is not None:
        out.append(key)
        return
    k = _split(end - start)
    _collect_keys(start, start + k, out)
    _collect_keys(start + k, end, out)


def _evaluate(start: int, end: int, nodes: Mapping[NodeKey, bytes]) -> bytes:
    """MTH(D[start:end]) from the nodes gathered by :func:`_collect_keys`."""
    key = _perfect_key(start, end)
    if key is not None:
        return nodes[key]
    k = _split(end - start)
    return node_hash(_evaluate(start, start + k, nodes), _evaluate(start + k, end, nodes))


def _fetch(reader: NodeReader, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
    """Read ``keys`` (deduplicated) with a single ``get_nodes`` call."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    hashes = list(reader.get_nodes(wanted))
    if len(hashes) != len(wanted):
        raise LookupError(f"node reader returned {len(hashes)} hashes for {len(wanted)} keys")
    for (level, index), value in zip(wanted, hashes, strict=True):
        if len(value) != HASH_SIZE:
            raise ValueError(
                f"stored node ({level}, {index}) is {len(value)} bytes, not {HASH_SIZE}"
            )
    return dict(zip(wanted, hashes, strict=True))


def _hashes_of_ranges(ranges: Sequence[tuple[int, int]], reader: NodeReader) -> list[bytes]:
    keys: list[NodeKey] = []
    for start, end in ranges:
        _collect_keys(start, end, keys)
    nodes = _fetch(reader, keys)
    return [_evaluate(start, end, nodes) for start, end in ranges]


def _check_size(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


# --------------------------------------------------------------------------- appending


def nodes_to_store(
    old_size: int, new_leaf_hashes: Sequence[bytes], reader: NodeReader
) -> list[tuple[int, int, bytes]]:
    """Every node ``(level, index, hash)`` that appending ``new_leaf_hashes`` completes.

    ``reader`` must hold the tree of ``old_size`` leaves; only the few nodes of its right
    edge that new subtrees need are read (one ``get_nodes`` call, O(log n) keys).  The result
    (leaf hashes first, then level by level) is what the caller persists, atomically with the
    new tree size.  Cost: O(len(new_leaf_hashes) + log n) hashing.
    """
    _check_size("old_size", old_size)
    for i, value in enumerate(new_leaf_hashes):
        if len(value) != HASH_SIZE:
            raise ValueError(f"new leaf hash #{i} is {len(value)} bytes, not {HASH_SIZE}")
    if not new_leaf_hashes:
        return []
    new_size = old_size + len(new_leaf_hashes)

    # The right edge of the old tree (one perfect subtree per set bit of old_size) that is the
    # left child of a node completed by this batch.
    edge = [
        (level, (old_size >> level) - 1)
        for level in range(old_size.bit_length())
        if (old_size >> level) & 1 and (new_size >> (level + 1)) > (old_size >> (level + 1))
    ]
    stored = _fetch(reader, edge)

    out: list[tuple[int, int, bytes]] = []
    level_hashes: dict[int, bytes] = {}
    for i, value in enumerate(new_leaf_hashes):
        level_hashes[old_size + i] = value
        out.append((0, old_size + i, value))
    level = 0
    while True:
        edge_key = (level, (old_size >> level) - 1)
        if edge_key in stored:
            level_hashes[edge_key[1]] = stored[edge_key]
        level += 1
        first, stop = old_size >> level, new_size >> level
        if first >= stop:
            break
        parents: dict[int, bytes] = {}
        for index in range(first, stop):
            value = node_hash(level_hashes[2 * index], level_hashes[2 * index + 1])
            parents[index] = value
            out.append((level, index, value))
        level_hashes = parents
    return out


# --------------------------------------------------------------------------- tree hashes


def subtree_hash(start: int, end: int, reader: NodeReader) -> bytes:
    """MTH(D[start:end]) for ``0 <= start <= end``, all of whose leaves are in the tree.

    Ranges met in proofs (and every ``[0, size)``) cost O(log n) node reads; a range that is
    not aligned to the tree's perfect subtrees is still answered, but may need more reads.
    """
    _check_size("start", start)
    if end < start:
        raise ValueError(f"empty range: end {end} < start {start}")
    if start == end:
        return EMPTY_ROOT
    return _hashes_of_ranges([(start, end)], reader)[0]


def root_hash(size: int, reader: NodeReader) -> bytes:
    """The root hash of the tree of the first ``size`` leaves (:data:`EMPTY_ROOT` for 0)."""
    _check_size("size", size)
    return subtree_hash(0, size, reader)


# --------------------------------------------------------------------------- proofs


def inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf up to the root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    siblings: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            siblings.append((mid, end))
            end = mid
        else:
            siblings.append((start, mid))
            start = mid
    siblings.reverse()
    return _hashes_of_ranges(siblings, reader)


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The subtrees PROOF(old_size, D[0:new_size]) is made of, in proof order."""
    _check_size("old_size", old_size)
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is larger than new size {new_size}")
    if old_size in (0, new_size):
        return []
    parts: list[tuple[int, int]] = []
    start, end, m, whole = 0, new_size, old_size, True  # SUBPROOF(m, D[start:end], whole)
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            parts.append((start + k, end))
            end = start + k
        else:
            parts.append((start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        parts.append((start, end))
    parts.reverse()
    return parts


def consistency_proof(old_size: int, new_size: int, reader: NodeReader) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1 (empty if old is 0 or new)."""
    return _hashes_of_ranges(_consistency_ranges(old_size, new_size), reader)


def consistency_proof_keys(old_size: int, new_size: int) -> list[NodeKey]:
    """The stored nodes :func:`consistency_proof` reads, so a caller can read many proofs'
    nodes at once."""
    keys: list[NodeKey] = []
    for start, end in _consistency_ranges(old_size, new_size):
        _collect_keys(start, end, keys)
    return keys


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf *hash*) is entry ``index`` of the tree ``(size, root)``.

    The algorithm of RFC 9162 §2.1.3.2.  Raises :class:`ProofError` if it does not verify.
    """
    _check_hash("leaf hash", leaf)
    _check_hash("root hash", root)
    for i, value in enumerate(proof):
        _check_hash(f"inclusion proof element {i}", value)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof is too long for leaf {index} of a tree of size {size}"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short for leaf {index} of a tree of size {size}")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root hash of tree size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    The algorithm of RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``; in addition, equal
    sizes need equal roots and an empty proof, and the empty tree (whose root must be
    :data:`EMPTY_ROOT`) is consistent with every tree, by an empty proof.
    Raises :class:`ProofError` if the proof does not verify.
    """
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    for i, value in enumerate(proof):
        _check_hash(f"consistency proof element {i}", value)
    if old_size < 0 or old_size > new_size:
        raise ProofError(f"tree size {new_size} cannot extend tree size {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal tree sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different root hashes for tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("root hash of the empty tree is not SHA-256 of the empty string")
        return

    path = list(proof)
    if not path:
        raise ProofError(f"empty consistency proof from tree size {old_size} to {new_size}")
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the root hash of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the root hash of size {new_size}")


# --------------------------------------------------------------------------- in-memory store


class MemoryNodeStore:
    """A dict-backed :class:`NodeReader` and writer, for tests and offline verification."""

    def __init__(self) -> None:
        self._nodes: dict[NodeKey, bytes] = {}
        self.size = 0
        """Number of leaves appended with :meth:`append`."""

    def get_node(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise KeyError(f"no stored node at level {level}, index {index}") from None

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        return [self.get_node(level, index) for level, index in keys]

    def put_nodes(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        """Store nodes as returned by :func:`nodes_to_store`."""
        for level, index, value in nodes:
            self._nodes[(level, index)] = value

    def append(self, new_leaf_hashes: Sequence[bytes]) -> int:
        """Append leaf hashes at the end of the tree; returns the new size."""
        self.put_nodes(nodes_to_store(self.size, new_leaf_hashes, self))
        self.size += len(new_leaf_hashes)
        return self.size

    def nodes(self) -> dict[NodeKey, bytes]:
        """A copy of every stored node."""
        return dict(self._nodes)


class RootBuilder:
    """Root of a tree fed one leaf hash at a time in O(log n) memory (a compact range).

    Used to recompute a stored tree from its entries without trusting stored nodes.
    """

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (leaf count, hash), strictly decreasing

    def add(self, leaf: bytes) -> None:
        count, value = 1, leaf
        while self._stack and self._stack[-1][0] == count:
            left_count, left = self._stack.pop()
            count, value = left_count + count, node_hash(left, value)
        self._stack.append((count, value))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        value = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            value = node_hash(left, value)
        return value
