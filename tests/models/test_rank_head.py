"""RankHead learns what relevance in a list usually is: how well an element matches its context.

Each set's context c (what the finalized set embedding hands the head) is given directly
here, and an element's relevance is decided by its similarity x·c to it: the 3 elements
of highest x·c in a set of 20 are relevant. An MLP on the bare concatenation [x, c] can
only build the product x·c out of its ReLU units, a second-order effect that the
listwise gradient hardly moves at initialisation (the passages example sat at constant
scores, a loss of ln(list length), for 10 epochs); the head's element-wise product of x
with a learned projection of c makes the similarity one linear unit away.
"""

from __future__ import annotations

import torch
from torch.nn.functional import normalize

from setpipe.data.batch import SetBatch
from setpipe.models.heads import RankHead
from setpipe.train.losses import listwise_softmax_loss
from setpipe.train.metrics import ndcg_per_set

FEATURES, SIZE, RELEVANT = 32, 20, 3


def _lists(num_sets: int, generator: torch.Generator) -> tuple[SetBatch, torch.Tensor]:
    """Unit-vector elements (components ~0.18, like unit-norm 32-d embeddings) and a unit
    context per set; relevance 1 for the set's RELEVANT elements of highest x·c."""
    x = normalize(torch.randn(num_sets, SIZE, FEATURES, generator=generator), dim=-1)
    ctx = normalize(torch.randn(num_sets, FEATURES, generator=generator), dim=-1)
    similarity = torch.einsum("bnf,bf->bn", x, ctx)
    top = similarity.topk(RELEVANT, dim=1).indices
    relevance = torch.zeros(num_sets, SIZE).scatter_(1, top, 1.0)
    batch = SetBatch.from_sets(list(x), element_targets=relevance.reshape(-1))
    return batch, ctx


def _held_out_ndcg(head: RankHead, steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        batch, ctx = _lists(32, generator)
        loss = listwise_softmax_loss(head(batch.values, batch.set_index(), ctx), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batch, ctx = _lists(500, generator)
    with torch.no_grad():
        scores = head(batch.values, batch.set_index(), ctx)
    return float(
        ndcg_per_set(scores.numpy(), batch.element_targets.numpy(), batch.offsets.numpy()).mean()
    )


def test_rank_head_learns_element_context_similarity() -> None:
    torch.manual_seed(0)
    head = RankHead(FEATURES, FEATURES, hidden=[32])
    # Random scores give 0.33 here and the exact x·c ranking 1.0; the concatenation-only
    # head reached 0.70 in these 300 steps of 32 lists, the head with the product 0.98.
    ndcg = _held_out_ndcg(head, steps=300)
    assert ndcg >= 0.9, f"nDCG@10 {ndcg:.3f} after 300 steps; expected >= 0.9"


def test_rank_head_scores_rows_independently() -> None:
    """Row-wise: an element's score depends on its own row and its set's context only, so
    chunked scoring (the second pass over a huge set) equals whole scoring."""
    torch.manual_seed(0)
    head = RankHead(FEATURES, 5, hidden=[16]).eval()
    values = torch.randn(12, FEATURES)
    set_index = torch.tensor([0] * 5 + [1] * 7)
    embedding = torch.randn(2, 5)
    whole = head(values, set_index, embedding)
    parts = torch.cat([head(values[i : i + 4], set_index[i : i + 4], embedding) for i in (0, 4, 8)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert whole.shape == (12,)
