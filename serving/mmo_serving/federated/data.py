"""Each site's local data: a deterministic, skewed share of the synthetic shapes task.

Site ``p`` of ``n`` owns the training drawings whose index is ``p`` modulo ``n`` (no
drawing is on two sites) and, of their questions, keeps every question of its *own*
kinds and only a few of the others: site 0 mostly asks colours and counts, site 1 shapes
and existence, site 2 counts and existence, and so on. No site alone sees the task's
distribution; the held-out set (the ``test`` split, every kind) does.

Pure numpy (plus the task generator): the ClientApp turns these items into features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmo_serving.model import tasks

# The answer vocabulary of the tuned head: every one-word answer of the task.
ANSWERS: tuple[str, ...] = (
    *tasks.COLOURS,
    *tasks.SHAPES,
    *tasks.COUNT_WORDS[1:],
    "yes",
    "no",
)

# Kinds each site sees mostly (site index modulo the list's length).
SITE_KINDS: tuple[tuple[str, str], ...] = (
    ("colour", "count"),
    ("shape", "exists"),
    ("count", "exists"),
    ("colour", "shape"),
)


@dataclass(frozen=True)
class Item:
    """One question about one drawing: ``(split, index)`` regenerate the drawing."""

    split: str
    index: int
    question: str
    answer: str
    kind: str

    @property
    def label(self) -> int:
        return ANSWERS.index(self.answer)


def _check(partition_id: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id must be in 0..{num_partitions - 1} (num-partitions), got {partition_id}"
        )


def site_kinds(partition_id: int) -> tuple[str, str]:
    return SITE_KINDS[partition_id % len(SITE_KINDS)]


def site_items(
    partition_id: int,
    num_partitions: int,
    scenes: int,
    *,
    seed: int = 0,
    minority: float = 0.1,
) -> list[Item]:
    """The questions site ``partition_id`` holds: ``scenes`` drawings of its own, every
    question of its two kinds, a ``minority`` fraction of the other kinds."""
    _check(partition_id, num_partitions)
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if not 0.0 <= minority <= 1.0:
        raise ValueError(f"minority must be in [0, 1], got {minority}")
    own = site_kinds(partition_id)
    rng = np.random.default_rng([seed, partition_id, 7])
    items: list[Item] = []
    for k in range(scenes):
        index = partition_id + k * num_partitions
        sample = tasks.make_sample(index, seed, "train")
        for qa in sample.qas:
            if qa.kind in own or rng.random() < minority:
                items.append(Item("train", index, qa.question, qa.answer, qa.kind))
    return items


def held_out_items(scenes: int, *, seed: int = 0) -> list[Item]:
    """Every question of ``scenes`` drawings of the ``test`` split (all kinds)."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    return [
        Item("test", i, qa.question, qa.answer, qa.kind)
        for i in range(scenes)
        for qa in tasks.make_sample(i, seed, "test").qas
    ]


def images_of(items: list[Item], seed: int = 0) -> list[object]:
    """The drawing of each item (PIL images; regenerated, never stored)."""
    cache: dict[tuple[str, int], object] = {}
    out = []
    for it in items:
        key = (it.split, it.index)
        if key not in cache:
            cache[key] = tasks.make_sample(it.index, seed, it.split).image
        out.append(cache[key])
    return out
