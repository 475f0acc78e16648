"""The input layer shared by every ranker: field embeddings plus a numerical projection.

Each of the ``F`` categorical fields is embedded into ``E`` numbers and the ``N``
numerical fields are projected by one ``Linear`` to one more ``E``-vector; the ``F + 1``
vectors are concatenated into ``[B, (F + 1) * E]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from taa.data.schema import OOV_INDEX, InputSpec
from taa.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class FeatureEmbedding(nn.Module):
    """Embeds categorical indices and projects numerical features, then concatenates them.

    All fields share one fused table: field ``f`` owns rows ``offsets[f]`` to
    ``offsets[f] + vocab_sizes[f] - 1``, so one lookup serves every field.

    Note:
        An index outside ``[0, vocab_sizes[f])`` (a negative code, or a category the
        vocabulary never saw) is read as the out-of-vocabulary index ``OOV_INDEX`` (0) of
        its field instead of raising. The mapping is a ``torch.where``, so it costs one
        element-wise pass, needs no host synchronisation and survives ONNX export. It is
        silent: count such values when preparing data, not here.

    Args:
        vocab_sizes: rows per categorical field, the OOV row included (length ``F``).
        num_numerical: number of numerical fields ``N``; 0 leaves out the projection.
        embedding_dim: width ``E`` of each field's vector.

    Example:
        >>> layer = FeatureEmbedding((3, 5), num_numerical=2, embedding_dim=4)
        >>> layer(torch.tensor([[1, 4], [9, -1]]), torch.zeros(2, 2)).shape
        torch.Size([2, 12])
    """

    def __init__(self, vocab_sizes: Sequence[int], num_numerical: int, embedding_dim: int) -> None:
        super().__init__()
        sizes = [int(size) for size in vocab_sizes]
        for position, size in enumerate(sizes):
            if size < 1:
                raise ConfigError(
                    f"categorical field {position} has vocab_size {size}; every field needs "
                    "at least 1 row (the OOV row); rebuild the schema with `taa prepare`"
                )
        if num_numerical < 0:
            raise ConfigError(f"num_numerical must be >= 0, got {num_numerical}")
        if not sizes and num_numerical == 0:
            raise ConfigError("a model needs at least one categorical or numerical field, got 0")
        self.vocab_sizes = tuple(sizes)
        self.num_numerical = int(num_numerical)
        self.embedding_dim = int(embedding_dim)

        limits = torch.tensor(sizes, dtype=torch.long)
        self.register_buffer("limits", limits, persistent=False)
        self.register_buffer("offsets", torch.cumsum(limits, 0) - limits, persistent=False)
        self.table = nn.Embedding(max(sum(sizes), 1), embedding_dim)
        self.numerical = nn.Linear(num_numerical, embedding_dim) if num_numerical else None

    @classmethod
    def from_spec(cls, spec: InputSpec, embedding_dim: int) -> FeatureEmbedding:
        """The input layer for a schema's fields (``spec.vocab_sizes``, ``spec.num_numerical``)."""
        return cls(spec.vocab_sizes, spec.num_numerical, embedding_dim)

    @property
    def output_dim(self) -> int:
        """Width of the output: ``(F + 1) * E``, or ``F * E`` without numerical fields."""
        vectors = len(self.vocab_sizes) + (1 if self.numerical is not None else 0)
        return vectors * self.embedding_dim

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """Embed one batch.

        Args:
            categorical: integer category indices ``[B, F]``.
            numerical: float features ``[B, N]``.

        Returns:
            The concatenated field vectors ``[B, (F + 1) * E]``.
        """
        self._check_inputs(categorical, numerical)
        parts = []
        if self.vocab_sizes:
            in_range = (categorical >= 0) & (categorical < self.limits)
            index = torch.where(in_range, categorical, torch.full_like(categorical, OOV_INDEX))
            vectors = self.table(index.long() + self.offsets)
            parts.append(vectors.flatten(start_dim=1))
        if self.numerical is not None:
            parts.append(self.numerical(numerical.to(self.numerical.weight.dtype)))
        inputs = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if torch.is_autocast_enabled(inputs.device.type):
            # Cast once here: every expert and gate would otherwise cast [B, (F + 1) * E]
            # again, forward and backward (9 % of a bf16 TAA step with 8 experts, 2 gates).
            inputs = inputs.to(torch.get_autocast_dtype(inputs.device.type))
        return inputs

    def _check_inputs(self, categorical: torch.Tensor, numerical: torch.Tensor) -> None:
        fields = len(self.vocab_sizes)
        if categorical.dim() != 2 or categorical.shape[1] != fields:
            raise DataError(
                f"categorical input has shape {tuple(categorical.shape)}; this model expects "
                f"[B, {fields}] (one column per categorical field of its schema); pass the "
                "schema's categorical columns in order"
            )
        if categorical.dtype.is_floating_point or categorical.dtype == torch.bool:
            raise DataError(
                f"categorical input has dtype {categorical.dtype}; expected an integer dtype "
                "(int64); cast the category indices with .long()"
            )
        if numerical.dim() != 2 or numerical.shape[1] != self.num_numerical:
            raise DataError(
                f"numerical input has shape {tuple(numerical.shape)}; this model expects "
                f"[B, {self.num_numerical}] (one column per numerical field of its schema); "
                "pass the schema's numerical columns in order"
            )
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not exporting and categorical.shape[0] != numerical.shape[0]:
            raise DataError(
                f"categorical input has {categorical.shape[0]} rows but numerical input has "
                f"{numerical.shape[0]}; both must hold the same rows"
            )
