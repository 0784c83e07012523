"""Paged KV cache with prefix caching by block hash, in the style of vLLM v1's block pool.

The cache is ``capacity_blocks`` blocks of ``block_size`` tokens. It does not track block ids,
only counts, because a simulator needs the accounting, not the addresses:

* **plain free blocks** (``free``): hold nothing anyone can reuse;
* **hash units**: a prompt block (or a run of ``unit_blocks`` blocks, when the Workload's
  ``prefix_blocks`` hashes cover more tokens than one KV block, e.g. Mooncake traces' 512-token
  blocks) identified by its hash. A unit is reference-counted by the sequences holding it; at
  refcount 0 it stays cached but *evictable*, in an LRU, until its space is needed;
* **private blocks** of a sequence (the part of the prompt not covered by hashes, and its output).
  When a sequence is preempted, its full private blocks stay cached as one evictable *chain*
  (vLLM v1 caches every full block, so a preempted request that is rescheduled before its blocks
  are reused skips recomputing them); the chain is evicted from its tail first, as vLLM frees a
  request's blocks in reverse order. Private blocks of a finished sequence become plain free
  blocks (nothing else can hit them: their hashes are unique to that request).

Eviction takes plain free blocks first, then LRU entries, oldest first. A sequence's state lives in
the :class:`SeqKV` fields of the object passed in (the scheduler's request subclasses it).

Counters: ``queries`` and ``hits`` in tokens, as vLLM's ``prefix_cache_queries`` and
``prefix_cache_hits``, counted once per (re)admission of a sequence.
"""

from __future__ import annotations

from collections import OrderedDict


class SeqKV:
    """Per-sequence KV state: the hash units it may use, how many it holds, its private blocks."""

    __slots__ = ("chain", "hashes", "nu", "priv")

    def __init__(self, hashes: list[int]) -> None:
        self.hashes = hashes  # hashes of the full prompt units, in order (empty: no caching)
        self.nu = 0  # leading hash units held (referenced)
        self.priv = 0  # private blocks held
        self.chain = False  # a cached private chain of this sequence is in the LRU


class KVCache:
    """Block accounting for one replica. All sizes are in blocks unless named ``*_tokens``."""

    __slots__ = (
        "_lru",
        "_ref",
        "block_size",
        "capacity_blocks",
        "enable_caching",
        "evictable",
        "free",
        "fresh",
        "hits",
        "queries",
        "unit_blocks",
    )

    def __init__(
        self,
        capacity_blocks: int,
        block_size: int = 16,
        *,
        unit_blocks: int = 1,
        enable_caching: bool = True,
    ) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"KV capacity must be at least one block, got {capacity_blocks}")
        if block_size < 1 or unit_blocks < 1:
            raise ValueError("block_size and unit_blocks must be >= 1")
        self.capacity_blocks = int(capacity_blocks)
        self.block_size = int(block_size)
        self.unit_blocks = int(unit_blocks)
        self.enable_caching = bool(enable_caching)
        self.free = self.capacity_blocks
        self.evictable = 0
        self._ref: dict[int, int] = {}  # unit hash -> refcount (present: cached)
        self._lru: OrderedDict[object, int] = OrderedDict()  # evictable entry -> blocks
        self.fresh: set[int] = set()  # units registered in the step being planned (not computed)
        self.queries = 0
        self.hits = 0

    # ---- capacity ---------------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Blocks that can be allocated now (plain free plus evictable cached)."""
        return self.free + self.evictable

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - (self.free + self.evictable) / self.capacity_blocks

    @property
    def cached_units(self) -> int:
        return len(self._ref)

    def alloc(self, n: int) -> None:
        """Take ``n`` blocks (the caller checked ``n <= available``), evicting LRU entries."""
        if n > self.free:
            self._evict(n - self.free)
        self.free -= n

    def _evict(self, deficit: int) -> None:
        lru = self._lru
        k = self.unit_blocks
        while deficit > 0:
            key, blocks = lru.popitem(last=False)
            if isinstance(key, SeqKV):  # a preempted sequence's private chain: tail first
                take = min(blocks, deficit)
                if blocks > take:
                    lru[key] = blocks - take
                    lru.move_to_end(key, last=False)
                else:
                    key.chain = False
                self.evictable -= take
                self.free += take
                deficit -= take
            else:
                del self._ref[key]
                self.evictable -= k
                self.free += k
                deficit -= k

    # ---- prefix lookup and growth -----------------------------------------------------------

    def lookup(self, seq: SeqKV, num_tokens: int) -> tuple[int, int]:
        """Cached leading hash units and private-chain blocks for a sequence of ``num_tokens``.

        At most ``num_tokens - 1`` tokens can hit (the last one is computed to get logits).
        No state changes.
        """
        if not self.enable_caching:
            return 0, 0
        max_blocks = (num_tokens - 1) // self.block_size
        hashes = seq.hashes
        max_units = min(len(hashes), max_blocks // self.unit_blocks)
        ref = self._ref
        hu = 0
        while hu < max_units and hashes[hu] in ref:
            hu += 1
        ch = 0
        if seq.chain and hu == len(hashes):
            ch = min(self._lru[seq], max_blocks - hu * self.unit_blocks)
        return hu, ch

    def grow_need(self, seq: SeqKV, tokens: int) -> int:
        """Blocks of ``available`` that growing ``seq`` to ``tokens`` computed tokens consumes."""
        return self._need(seq.hashes, seq.nu, seq.priv, tokens)

    def _need(self, hashes: list[int], nu: int, priv: int, tokens: int) -> int:
        k = self.unit_blocks
        target = min(len(hashes), tokens // (k * self.block_size)) if hashes else 0
        need = 0
        ref = self._ref
        for j in range(nu, target):
            rc = ref.get(hashes[j])
            if rc is None or rc == 0:  # a new unit, or a cached one claimed from the LRU
                need += k
        return need + (-(-tokens // self.block_size) - target * k) - priv

    def grow(self, seq: SeqKV, tokens: int) -> None:
        """Hold blocks for ``tokens`` computed tokens (the caller checked ``grow_need``).

        Full hash units are registered (cached) as soon as they are allocated, as vLLM v1 does;
        a unit whose hash another sequence registered meanwhile is shared instead.
        """
        k = self.unit_blocks
        nu = seq.nu
        hashes = seq.hashes
        target = min(len(hashes), tokens // (k * self.block_size)) if hashes else 0
        created = 0
        if target > nu:
            ref = self._ref
            lru = self._lru
            for j in range(nu, target):
                h = hashes[j]
                rc = ref.get(h)
                if rc is None:
                    ref[h] = 1
                    self.fresh.add(h)
                    created += 1
                else:
                    if rc == 0:
                        del lru[h]
                        self.evictable -= k
                    ref[h] = rc + 1
            seq.nu = target
        priv = -(-tokens // self.block_size) - target * k
        physical = created * k + priv - seq.priv
        seq.priv = priv
        if physical > 0:
            self.alloc(physical)
        else:
            self.free -= physical

    def admit_need(self, seq: SeqKV, hit_units: int, chain_hit: int, tokens: int) -> int:
        """Blocks of ``available`` that admitting ``seq`` (with these hits) up to ``tokens``
        consumes."""
        k = self.unit_blocks
        claimed = chain_hit
        ref = self._ref
        for h in seq.hashes[:hit_units]:
            if ref[h] == 0:
                claimed += k
        need = self._need(seq.hashes, hit_units, chain_hit, tokens)
        return claimed + need

    def admit(self, seq: SeqKV, num_tokens: int, hit_units: int, chain_hit: int,
              tokens: int) -> None:
        """Take the hits found by :meth:`lookup` and grow to ``tokens`` (the caller checked
        :meth:`admit_need`). A private chain not (fully) reused is released."""
        k = self.unit_blocks
        if seq.chain:
            blocks = self._lru.pop(seq)
            self.evictable -= blocks
            self.free += blocks - chain_hit
            seq.chain = False
        if hit_units:
            ref = self._ref
            lru = self._lru
            for h in seq.hashes[:hit_units]:
                rc = ref[h]
                if rc == 0:
                    del lru[h]
                    self.evictable -= k
                ref[h] = rc + 1
        seq.nu = hit_units
        seq.priv = chain_hit
        if self.enable_caching:
            self.queries += num_tokens
            self.hits += (hit_units * k + chain_hit) * self.block_size
        self.grow(seq, tokens)

    def release(self, seq: SeqKV, keep_chain: int = 0, drop_from: int | None = None) -> None:
        """Free a sequence's blocks: hash units lose a reference (cached until evicted at 0);
        ``keep_chain`` full private blocks stay cached as its chain (preemption), the rest of the
        private blocks become plain free blocks. Units from index ``drop_from`` on that were
        registered in the step being planned and that nobody else holds are dropped, not cached:
        their tokens were never computed (the sequence was preempted before its step ran)."""
        k = self.unit_blocks
        if keep_chain > 0 and self.enable_caching:
            keep_chain = min(keep_chain, seq.priv)
            self._lru[seq] = keep_chain
            self.evictable += keep_chain
            self.free += seq.priv - keep_chain
            seq.chain = True
        else:
            self.free += seq.priv
        if seq.nu:
            ref = self._ref
            lru = self._lru
            caching = self.enable_caching
            fresh = self.fresh if drop_from is not None else ()
            for j in range(seq.nu - 1, -1, -1):
                h = seq.hashes[j]
                rc = ref[h] - 1
                if rc == 0 and caching and not (h in fresh and j >= drop_from):
                    ref[h] = 0
                    lru[h] = k
                    self.evictable += k
                elif rc == 0:
                    del ref[h]
                    self.free += k
                else:
                    ref[h] = rc
        seq.nu = 0
        seq.priv = 0

    def drop_chain(self, seq: SeqKV) -> None:
        """Release a sequence's cached private chain (it was aborted while waiting)."""
        if seq.chain:
            blocks = self._lru.pop(seq)
            self.evictable -= blocks
            self.free += blocks
            seq.chain = False

    def check(self) -> None:
        """Internal consistency (tests): the counts add up."""
        lru_blocks = sum(self._lru.values())
        assert lru_blocks == self.evictable, (lru_blocks, self.evictable)
        assert 0 <= self.free <= self.capacity_blocks
        assert self.free + self.evictable <= self.capacity_blocks
        for key in self._lru:
            if not isinstance(key, SeqKV):
                assert self._ref[key] == 0
