"""Synthetic listwise re-ranking data: per query, a list of candidate passage vectors.

All of it is synthetic; no text is involved. The world has 64 topics, each a random
unit direction in 32 dimensions. A query is a unit vector near its topic's direction.
Its candidate list (20 to 100 passages) mixes:
- relevant passages: noisy copies of the query, graded by cosine similarity to it
  (> 0.9: 3, > 0.8: 2, otherwise 1);
- same-topic near misses: noisy copies of the topic direction (grade 0 unless, by
  chance, they are as close to the query as a relevant one);
- distractors from other topics (grade 0).
Grades therefore follow the geometry, but a passage's grade depends on the query,
which only the rest of the list reveals: the task needs the set context.

Vectors are written with length sqrt(32), so each component has about unit variance
(what ``standardize`` would give); the cosines above are of the directions. Bring
unit-norm embeddings of your own to the same scale.

Columns: passages (list<fixed_size_list<float32, 32>>), relevance (list<int32>, one
grade per passage), query_id (int64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from setpipe.data.datagen._write import SPLITS, ragged, write_files

DIM = 32
TOPICS = 64
MIN_CANDIDATES, MAX_CANDIDATES = 20, 100
SCALE = np.sqrt(DIM)
"""Length of every written vector: each component then has unit scale, the scale a net is
initialised for. Unit-norm vectors (components ~0.18) gave the passages example's UMBC a
list context that varied ~3% between lists, and it kept constant scores for 10 epochs."""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_passages(num_queries: int, seed: int, first_query_id: int = 0) -> pa.Table:
    world = np.random.default_rng(12345)  # the topics are the same in every split
    topics = _unit(world.normal(size=(TOPICS, DIM)))
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, TOPICS, num_queries)
    # Noise vectors are scaled by their expected norm: a unit vector plus noise of norm r
    # has a cosine of about 1 / sqrt(1 + r^2) to the original.
    query = _unit(topics[topic] + 0.8 / np.sqrt(DIM) * rng.normal(size=(num_queries, DIM)))
    sizes = rng.integers(MIN_CANDIDATES, MAX_CANDIDATES + 1, num_queries)
    owner = np.repeat(np.arange(num_queries), sizes)
    kind = rng.choice(3, size=owner.size, p=[0.1, 0.3, 0.6])  # relevant, near miss, other
    other_topic = (topic[owner] + rng.integers(1, TOPICS, owner.size)) % TOPICS
    centre = np.where(
        (kind == 0)[:, None],
        query[owner],
        np.where((kind == 1)[:, None], topics[topic[owner]], topics[other_topic]),
    )
    # Relevant copies: r in [0.3, 0.9] (cosine 0.96..0.74 to the query); others: r = 0.5.
    r = np.where(kind == 0, rng.uniform(0.3, 0.9, owner.size), 0.5)
    noise = (r / np.sqrt(DIM))[:, None] * rng.normal(size=(owner.size, DIM))
    unit = _unit(centre + noise)
    cosine = (unit * query[owner]).sum(axis=1)
    vectors = (SCALE * unit).astype(np.float32)
    grade = np.select([cosine > 0.9, cosine > 0.8, kind == 0], [3, 2, 1], 0).astype(np.int32)
    passages = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
    return pa.table(
        {
            "passages": ragged(sizes, passages),
            "relevance": ragged(sizes, pa.array(grade)),
            "query_id": pa.array(first_query_id + np.arange(num_queries, dtype=np.int64)),
        }
    )


def generate_passages(
    out_dir: Path, sizes: dict[str, int], seed: int = 0, rows_per_file: int = 5000
) -> dict[str, list[Path]]:
    written = {}
    for i, split in enumerate(SPLITS):
        n = sizes.get(split, 0)
        if n > 0:
            table = make_passages(n, seed * 10 + i, first_query_id=i * 1_000_000_000)
            written[split] = write_files(table, Path(out_dir) / split, rows_per_file, "passages")
    return written
