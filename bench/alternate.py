"""Before/after comparisons measured in one run: each round measures this tree, then the
other checkout, so both see the same moments of a shared machine.

The scripts that use it import it only when they compare, in the parent process: their
one-round child runs with the other tree first on ``PYTHONPATH``, which may predate it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def alternated(
    root: Path,
    compare: Path | None,
    rounds: int,
    measure: Callable[[Path], T],
    on_sample: Callable[[str, T], None] | None = None,
) -> dict[str, list[T]]:
    """``rounds`` samples of ``measure(tree)`` per tree ("this tree", then ``compare``),
    the trees alternated round by round."""
    trees = {"this tree": root}
    if compare is not None:
        trees[str(compare)] = compare.resolve()
    samples: dict[str, list[T]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            sample = measure(tree)
            samples[name].append(sample)
            if on_sample is not None:
                on_sample(name, sample)
    return samples
