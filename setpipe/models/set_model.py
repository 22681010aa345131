"""SetModel: a set encoder and a task head, with whole, chunked, streamed and estimated passes.

Outputs (every pass): classify -> logits [B, C]; regress -> values [B]; rank -> element
scores [E] (score_i = g(x_i, ctx[set_index_i]); ctx is the finalized set embedding, so
rank takes two passes over the chunks: encode, then score).

Several heads (``model.heads``): one encoder, the heads in an ``nn.ModuleDict`` (state
dict keys ``heads.<name>.*``), and every pass returns a dict head name -> that head's
output as above; the embedding is computed once and shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import torch
from torch import nn

from setpipe.data.batch import SetBatch, chunk_ranges
from setpipe.errors import ModelError
from setpipe.models.estimator import (
    estimated_embedding,
    estimated_forward,
    estimated_scores,
    rest_block,
    sample_subsets,
)
from setpipe.models.protocol import MBCEncoder, state_dtype
from setpipe.spec.models import DEFAULT_CHUNK_SIZE

Task = Literal["classify", "regress", "rank"]
Outputs = torch.Tensor | dict[str, torch.Tensor]
"""One head: its tensor; several heads: head name -> its tensor."""


class SetModel(nn.Module):
    def __init__(
        self, encoder: nn.Module, head: nn.Module, task: Task | Mapping[str, Task]
    ) -> None:
        """One head: ``head`` and its ``task``. Several heads: ``head`` an ``nn.ModuleDict``
        and ``task`` a mapping with the same names (then ``self.task`` is None)."""
        super().__init__()
        self.encoder = encoder
        self.task: Task | None
        self.tasks: dict[str, Task] | None
        if isinstance(task, Mapping):
            if not isinstance(head, nn.ModuleDict) or list(head) != list(task):
                raise ModelError(
                    f"several heads need an nn.ModuleDict of heads named as the tasks "
                    f"{list(task)}; got {type(head).__name__}"
                )
            self.heads = head
            self.task, self.tasks = None, dict(task)
        else:
            self.head = head
            self.task, self.tasks = task, None

    @property
    def ranks(self) -> bool:
        """True when a head scores elements (two passes over the chunks)."""
        return self.task == "rank" or "rank" in (self.tasks or {}).values()

    @property
    def is_mbc(self) -> bool:
        """True when the encoder is mini-batch consistent (chunking and the estimator apply)."""
        return isinstance(self.encoder, MBCEncoder)

    # ------------------------------------------------------------------ whole batch

    def forward(
        self,
        batch: SetBatch,
        *,
        grad_budget: int | None = None,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Outputs:
        """The outputs on ``batch``; with ``grad_budget``, the estimated-gradient pass.

        The estimator is reachable through ``forward`` so that a DDP-wrapped model runs it
        through DDP's own forward: ``ddp(batch, grad_budget=M, chunk_size=c, generator=g)``.
        ``generator`` draws the per-set random slots (and the subsets).
        """
        if grad_budget is not None:
            return self.forward_estimated(
                batch, grad_budget, chunk_size or DEFAULT_CHUNK_SIZE, generator
            )
        return self.outputs(batch, self.encoder(batch, generator))

    def outputs(self, batch: SetBatch, embedding: torch.Tensor) -> Outputs:
        """The task outputs from set embeddings [B, H] (rank scores every element of ``batch``)."""
        if self.tasks is not None:
            set_index = batch.set_index() if self.ranks else None
            return {
                name: head(batch.values, set_index, embedding)
                if self.tasks[name] == "rank"
                else head(embedding)
                for name, head in self.heads.items()
            }
        if self.task == "rank":
            return self.head(batch.values, batch.set_index(), embedding)
        return self.head(embedding)

    def forward_estimated(
        self,
        batch: SetBatch,
        grad_budget: int,
        chunk_size: int,
        generator: torch.Generator | None = None,
    ) -> Outputs:
        """Same outputs as ``forward``; the gradient is the unbiased n/M estimate from at most
        ``grad_budget`` elements per set (see setpipe/models/estimator.py).

        The elements outside the subsets go through ``update`` under no_grad first, before
        the gradient subset's graph exists, in blocks of ``rest_block(chunk_size,
        grad_budget)``: big enough that per-call overhead does not dominate, small enough
        that the graph, not the no-grad pass, sets the step's peak memory.
        """
        if not self.is_mbc:
            raise ModelError(
                "the gradient estimator (train.grad_element_budget) needs a mini-batch "
                "consistent encoder (deepsets, umbc); set_transformer sees whole sets"
            )
        enc: MBCEncoder = self.encoder  # type: ignore[assignment]
        # Slots first, from the same generator as ``forward``: same seed, same slots.
        state0 = enc.init_state(
            batch.num_sets, batch.values.device, state_dtype(batch.values.dtype), generator
        )
        subsets = sample_subsets(batch, grad_budget, generator, scoring=self.ranks)
        if self.tasks is not None:
            block = rest_block(chunk_size, grad_budget)
            embedding = estimated_embedding(
                enc, batch, subsets, chunk_size, None, state0, block=block
            )
            return {
                name: estimated_scores(head, batch, subsets, embedding, chunk_size)
                if self.tasks[name] == "rank"
                else head(embedding)
                for name, head in self.heads.items()
            }
        return estimated_forward(
            enc,
            self.head,
            batch,
            subsets,
            chunk_size,
            state0=state0,
            rank=self.task == "rank",
            block=rest_block(chunk_size, grad_budget),
        )

    # ------------------------------------------------------------------ constant memory

    def embed_chunked(self, batch: SetBatch, chunk_size: int) -> torch.Tensor:
        """Set embeddings [B, H] folding ``chunk_size`` elements at a time (MBC encoders)."""
        if not self.is_mbc:
            return self.encoder(batch)
        enc: MBCEncoder = self.encoder  # type: ignore[assignment]
        chunks = ((v, s) for _, _, v, s in chunk_ranges(batch, chunk_size))
        return enc.encode_chunks(
            chunks,
            batch.num_sets,
            device=batch.values.device,
            dtype=state_dtype(batch.values.dtype),
            context=batch.context,
        )

    def predict_chunked(self, batch: SetBatch, chunk_size: int) -> Outputs:
        """Same outputs as ``forward``, in memory constant in the set size (MBC encoders; the
        Set Transformer falls back to the whole batch). Rank: encode pass, then score pass."""
        embedding = self.embed_chunked(batch, chunk_size)
        if self.tasks is not None:
            if not self.is_mbc:
                return self.outputs(batch, embedding)
            return {
                name: torch.cat(
                    [head(v, s, embedding) for _, _, v, s in chunk_ranges(batch, chunk_size)]
                )
                if self.tasks[name] == "rank"
                else head(embedding)
                for name, head in self.heads.items()
            }
        if self.task != "rank":
            return self.head(embedding)
        if not self.is_mbc:
            return self.outputs(batch, embedding)
        return torch.cat(
            [self.head(v, s, embedding) for _, _, v, s in chunk_ranges(batch, chunk_size)]
        )

    def encode_stream(
        self, chunks: Iterable[torch.Tensor], context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The embedding [H] of ONE set given as a stream of element chunks [e_i, F].

        Memory is one chunk plus the state, whatever the set size (serving huge sets).
        ``context`` is the set's context features [C] (when the model was built with them).
        """
        if not self.is_mbc:
            raise ModelError(
                "encode_stream needs a mini-batch consistent encoder (deepsets, umbc); a "
                "set_transformer model needs the whole set: use forward or predict_chunked"
            )
        enc: MBCEncoder = self.encoder  # type: ignore[assignment]
        state: dict[str, torch.Tensor] | None = None
        for chunk in chunks:
            if state is None:
                state = enc.init_state(1, chunk.device, state_dtype(chunk.dtype))
            index = torch.zeros(chunk.shape[0], dtype=torch.long, device=chunk.device)
            state = enc.update(state, chunk, index)
        if state is None:
            param = next(self.parameters())
            state = enc.init_state(1, param.device, state_dtype(param.dtype))
        ctx = None if context is None else context.reshape(1, -1)
        return enc.finalize(state, ctx)[0]

    def predict_from_embedding(self, embedding: torch.Tensor) -> Outputs:
        """classify/regress outputs from embeddings [B, H] (or one embedding [H] -> [C] / []);
        several heads: those of the heads that are not rank heads."""
        if self.task == "rank":
            raise ModelError("rank scores elements: use score_elements(values, embedding)")
        single = embedding.dim() == 1
        batch = embedding[None] if single else embedding
        if self.tasks is not None:
            outs = {n: h(batch) for n, h in self.heads.items() if self.tasks[n] != "rank"}
            return {n: o[0] for n, o in outs.items()} if single else outs
        out = self.head(batch)
        return out[0] if single else out

    def score_elements(
        self,
        values: torch.Tensor,
        embedding: torch.Tensor,
        set_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rank scores [e] of elements ``values [e, F]``; ``embedding`` is one set's [H]
        (then ``set_index`` is omitted) or [B, H] with ``set_index [e]``."""
        rank_heads = [n for n, t in (self.tasks or {}).items() if t == "rank"]
        if self.task != "rank" and not rank_heads:
            raise ModelError(f"score_elements is for task rank; this model's task is {self.task}")
        head = self.heads[rank_heads[0]] if rank_heads else self.head
        if embedding.dim() == 1:
            embedding = embedding[None]
            set_index = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        if set_index is None:
            raise ModelError("score_elements with a [B, H] embedding needs set_index [e]")
        return head(values, set_index, embedding)  # type: ignore[no-any-return]

    def score_stream(
        self, chunks: Iterable[torch.Tensor], embedding: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        """Second pass of streamed ranking: the scores [e_i] of each chunk of one set."""
        for chunk in chunks:
            yield self.score_elements(chunk, embedding)
