"""Near-copy checks over the guardrail set without comparing every pair of rows.

Two word sets a and b overlap by |a & b| / |a | b| <= min(|a|, |b|) / max(|a|, |b|), so a set can only reach a
Jaccard of `threshold` with sets whose size is within that ratio of its own. `BySize(evaluated).near(words)` is the
evaluated sets of such a size (with a margin of one word either side), the only ones a test's pairwise check needs to
look at: the check itself is unchanged, and finds the same pairs (the full scan took 4-11 s a test)."""

from __future__ import annotations

import math
from collections import defaultdict


class BySize:
    def __init__(self, evaluated: list[set[str]], threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._sets: dict[int, list[set[str]]] = defaultdict(list)
        for words in evaluated:
            self._sets[len(words)].append(words)

    def near(self, words: set[str]) -> list[set[str]]:
        n = len(words)
        low, high = math.floor(n * self.threshold) - 1, math.ceil(n / self.threshold) + 1
        return [other for size in range(max(low, 0), high + 1) for other in self._sets.get(size, ())]
