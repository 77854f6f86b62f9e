"""Catalog-aware contrastive loss (e-CLIP).

In a marketplace the same product (a *catalog*) is listed by many sellers. In a plain CLIP batch two
listings of one catalog are negatives of each other, although their titles and photos describe the same
thing. e-CLIP turns them into positives: the target of each row is spread uniformly over every row of
the batch that shares its catalog.

Group ids are an integer tensor ``[B]``: equal ids mean "same catalog"; a negative id means "no
catalog", and such a row is a positive of itself only (two rows with ``-1`` are *not* positives of each
other). With every id distinct (or every id negative) the loss is exactly the CLIP loss.

At scale the loss is global and chunked: :class:`ContrastiveLoss` gathers embeddings and catalog ids
of every rank of a torchrun job (so a listing on rank 0 and one of its catalog on rank 3 are
positives), optionally computes only this rank's rows against all columns (``local_loss``), and
:func:`contrastive_loss_rows` computes rows ``chunk_size`` at a time with their gradients so that the
B x B similarity matrix never exists at once.

Two losses share the targets, the gathering and the chunking (``loss="softmax" | "sigmoid"``):

- ``softmax`` (CLIP / InfoNCE): the soft cross-entropy of each row against its catalog targets, both
  directions;
- ``sigmoid`` (SigLIP): every (image i, text j) pair is a binary problem, label ``+1`` when i and j
  are positives (the same row, or one non-negative catalog) and ``-1`` otherwise, with a learnable
  bias: ``-1/B * sum_ij log sigmoid(label_ij * (scale * <img_i, txt_j> + bias))``, summed over the
  columns and averaged over the rows of the global batch (as SigLIP normalises it). The positives are
  symmetric, so one direction covers every pair.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from eclip.errors import ConfigError
from eclip.train.distributed import all_reduce_mean, gather, gather_with_grad

TARGET_MODES = ("catalog", "clip")
LOSS_KINDS = ("softmax", "sigmoid")


def _check_targets(targets: str) -> None:
    if targets not in TARGET_MODES:
        raise ConfigError(f"unknown contrastive targets {targets!r}: use one of {', '.join(TARGET_MODES)}")


def _check_loss(loss: str) -> None:
    if loss not in LOSS_KINDS:
        raise ConfigError(f"unknown contrastive loss {loss!r}: use one of {', '.join(LOSS_KINDS)}")


def _check_group_ids(group_ids: Tensor, batch: int | None = None) -> None:
    if not isinstance(group_ids, Tensor) or group_ids.dim() != 1:
        raise ValueError("group_ids must be a 1-D integer tensor [B]")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must hold integers, got {group_ids.dtype}")
    if batch is not None and group_ids.shape[0] != batch:
        raise ValueError(f"group_ids has {group_ids.shape[0]} entries for a batch of {batch}")


def _positives(row_groups: Tensor | None, col_groups: Tensor | None, row_positions: Tensor,
               n_cols: int) -> Tensor:
    """``[R, C]`` boolean mask of the positives of some rows of a batch among all its C columns.

    ``row_positions[i]`` is the column of row i itself (always a positive). Rows and columns sharing a
    non-negative group id are positives too; ``row_groups=None`` means identity (CLIP) targets.
    """
    columns = torch.arange(n_cols, device=row_positions.device)
    own = row_positions.unsqueeze(1) == columns.unsqueeze(0)
    if row_groups is None:
        return own
    same = (row_groups.unsqueeze(1) == col_groups.unsqueeze(0)) & (row_groups >= 0).unsqueeze(1)
    return same | own


def positive_mask(group_ids: Tensor) -> Tensor:
    """``[B, B]`` boolean mask: ``mask[i, j]`` is True when rows i and j are positives of each other.

    Rows sharing a non-negative id are positives; a negative id matches only its own row. The diagonal
    is always True. The mask is symmetric.
    """
    _check_group_ids(group_ids)
    batch = group_ids.shape[0]
    return _positives(group_ids, group_ids, torch.arange(batch, device=group_ids.device), batch)


def catalog_targets(group_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, B]`` soft targets: each row spreads probability 1 uniformly over its positives.

    Positives share one catalog, so every row of a catalog has the same count and the matrix is
    symmetric: the same targets serve both directions (image->text and text->image).
    """
    mask = positive_mask(group_ids).to(dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
                     group_ids: Tensor | None = None, targets: str = "catalog", *,
                     chunk_size: int | None = None, loss: str = "softmax",
                     logit_bias: Tensor | float | None = None) -> Tensor:
    """Symmetric contrastive loss with catalog-aware (or plain CLIP) targets.

    ``logits = logit_scale * image_emb @ text_emb.T``; the loss is the mean of the soft cross-entropy of
    the image->text rows and of the text->image rows (the rows of ``logits.T``). ``logit_scale`` is the
    multiplier itself (a CLIP model passes ``log_scale.exp()``). Embeddings are used as given: normalise
    them first for cosine logits. ``targets="clip"`` uses identity targets whatever the group ids, and
    ``group_ids=None`` behaves the same. Half-precision inputs are upcast to float32 for the softmax.
    With ``chunk_size`` the loss is computed ``chunk_size`` rows at a time (see
    :func:`contrastive_loss_rows`): the same value and gradients without ever holding the B x B matrix.

    ``loss="sigmoid"`` is the SigLIP loss with the same positives (see the module's docstring):
    ``logits = logit_scale * image_emb @ text_emb.T + logit_bias`` (``logit_bias=None`` is 0), then
    ``-sum log sigmoid(label * logits) / B``. The softmax loss is invariant to a bias added to every
    logit, so it ignores ``logit_bias``.
    """
    _check_targets(targets)
    _check_loss(loss)
    _check_pair(image_emb, text_emb)
    batch = image_emb.shape[0]
    _check_scale(logit_scale)
    if targets == "clip":
        group_ids = None
    if group_ids is not None:
        _check_group_ids(group_ids, batch)
    # one implementation for dense and chunked: the dense loss is one chunk of all rows
    return contrastive_loss_rows(image_emb, text_emb, image_emb, text_emb, logit_scale, group_ids,
                                 group_ids, 0, chunk_size=chunk_size, loss=loss, logit_bias=logit_bias)


def _check_pair(image_emb: Tensor, text_emb: Tensor) -> None:
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError("image_emb and text_emb must be 2-D tensors [B, D]")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} "
                         "must have the same shape [B, D]")
    if image_emb.shape[0] == 0:
        raise ValueError("the batch is empty")


def _check_scale(logit_scale: Tensor | float, name: str = "logit_scale") -> None:
    if isinstance(logit_scale, Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(logit_scale.shape)}")


def contrastive_loss_rows(image_rows: Tensor, text_rows: Tensor, image_cols: Tensor, text_cols: Tensor,
                          logit_scale: Tensor | float, row_groups: Tensor | None,
                          col_groups: Tensor | None, row_offset: int = 0, *,
                          chunk_size: int | None = None, loss: str = "softmax",
                          logit_bias: Tensor | float | None = None) -> Tensor:
    """The loss of some rows of a batch against all of its columns.

    The batch has C listings (``image_cols``, ``text_cols``, ``col_groups``); the rows are its listings
    ``row_offset .. row_offset + R - 1`` (``image_rows``, ``text_rows``, ``row_groups``). The result is
    the mean over those R rows of the image->text soft cross-entropy (image rows against text columns)
    and of the text->image one, halved: with R == C it is :func:`contrastive_loss`, and the mean of the
    results over a partition of the rows is the loss of the whole batch. ``row_groups=None`` means
    identity (CLIP) targets.

    ``chunk_size`` computes ``chunk_size`` rows at a time and the gradients with respect to
    embeddings and ``logit_scale`` in the same pass, so that at most ``chunk_size x C`` logits exist at
    once; without it the softmax loss is the same computation in one chunk (``R x C`` logits, once:
    see :class:`_ChunkedRowLoss`). Half-precision inputs are computed in float32.

    ``loss="sigmoid"``: the sum over the R rows and all C columns of ``-log sigmoid(label * (s * <image
    row, text column> + logit_bias))``, divided by R (``text_rows`` and ``image_cols`` are not needed:
    the labels are symmetric, so image rows against text columns cover every pair once). Again the
    mean over a partition of the rows is the loss of the whole batch.
    """
    _check_loss(loss)
    _check_pair(image_rows, text_rows)
    _check_pair(image_cols, text_cols)
    _check_scale(logit_scale)
    _check_scale(logit_bias, "logit_bias")
    rows, cols = image_rows.shape[0], image_cols.shape[0]
    if image_rows.shape[1] != image_cols.shape[1]:
        raise ValueError(f"rows have {image_rows.shape[1]} dimensions, columns {image_cols.shape[1]}")
    if not 0 <= row_offset <= cols - rows:
        raise ValueError(f"rows {row_offset}..{row_offset + rows - 1} do not lie in a batch of {cols}")
    if (row_groups is None) != (col_groups is None):
        raise ValueError("give group ids for both rows and columns, or for neither")
    if row_groups is not None:
        _check_group_ids(row_groups, rows)
        _check_group_ids(col_groups, cols)
        row_groups, col_groups = row_groups.to(image_rows.device), col_groups.to(image_rows.device)
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ConfigError(f"loss chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(logit_scale, Tensor):
        logit_scale = torch.tensor(float(logit_scale), dtype=image_rows.dtype, device=image_rows.device)
    positions = torch.arange(row_offset, row_offset + rows, device=image_rows.device)
    if not torch.is_grad_enabled():  # no gradients to build in the forward pass (validation)
        image_rows, text_rows, image_cols, text_cols, logit_scale = (
            t.detach() for t in (image_rows, text_rows, image_cols, text_cols, logit_scale))
        if isinstance(logit_bias, Tensor):
            logit_bias = logit_bias.detach()

    if loss == "sigmoid":
        if logit_bias is None:
            logit_bias = 0.0
        if not isinstance(logit_bias, Tensor):
            logit_bias = torch.tensor(float(logit_bias), dtype=image_rows.dtype, device=image_rows.device)
        if chunk_size is None:
            positives = _positives(row_groups, col_groups, positions, cols)
            total = _dense_sigmoid_row_loss(image_rows, text_cols, logit_scale, logit_bias, positives)
        else:
            total = _ChunkedRowLoss.apply(image_rows, text_cols, logit_scale, row_groups, col_groups,
                                          positions, chunk_size, logit_bias)
        return total / rows

    # dense: one chunk of every row (the gradients are computed in the forward pass all the same, so
    # that only R x C logits exist at once instead of autograd's logits, targets and log-softmax)
    chunk = rows if chunk_size is None else chunk_size
    image_to_text = _ChunkedRowLoss.apply(image_rows, text_cols, logit_scale, row_groups, col_groups,
                                          positions, chunk)
    text_to_image = _ChunkedRowLoss.apply(text_rows, image_cols, logit_scale, row_groups, col_groups,
                                          positions, chunk)
    return (image_to_text + text_to_image) / (2 * rows)


def _dense_sigmoid_row_loss(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor,
                            positives: Tensor) -> Tensor:
    """Sum over rows and columns of ``-log sigmoid(label * (scale * rows @ cols.T + bias))``, label
    ``+1`` on ``positives`` and ``-1`` elsewhere."""
    logits = scale * (rows @ cols.T)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = logits + bias
    labels = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum()


def _target_products(rows: Tensor, cols: Tensor, row_groups: Tensor | None,
                     col_groups: Tensor | None, positions: Tensor) -> tuple[Tensor, Tensor]:
    """``(t @ cols [R, D], t.T @ rows [C, D])`` for the soft targets ``t`` of the rows, without ``t``.

    ``t[i, j] = 1 / n_i`` on row i's positives (see :func:`_positives`: its own column
    ``positions[i]`` and every column of its non-negative catalog) and 0 elsewhere. Positives are
    whole catalogs, so both products are sums per catalog (``index_add``): O((R + C) x D) instead of
    an R x C targets matrix.
    """
    if row_groups is None:  # identity targets: each row's own column
        return cols[positions], torch.zeros_like(cols).index_add_(0, positions, rows)
    n_cols = cols.shape[0]
    ids, slot = torch.unique(torch.cat([col_groups, row_groups]), return_inverse=True)
    col_slot, row_slot = slot[:n_cols], slot[n_cols:]
    row_in, col_in = row_groups >= 0, col_groups >= 0  # only non-negative ids share positives
    groups = ids.shape[0]
    col_sum = cols.new_zeros(groups, cols.shape[1]).index_add_(0, col_slot, cols)
    col_count = cols.new_zeros(groups).index_add_(0, col_slot, col_in.to(cols.dtype))
    # the row's own column, where it is not already one of its catalog's columns
    own = (~(row_in & (col_groups[positions] == row_groups))).to(cols.dtype)
    same = row_in.to(cols.dtype)
    count = same * col_count[row_slot] + own
    t_cols = (same.unsqueeze(1) * col_sum[row_slot] + own.unsqueeze(1) * cols[positions])
    t_cols = t_cols / count.unsqueeze(1)
    weighted = rows / count.unsqueeze(1)
    row_sum = rows.new_zeros(groups, rows.shape[1]).index_add_(0, row_slot,
                                                               weighted * same.unsqueeze(1))
    t_rows = col_in.to(rows.dtype).unsqueeze(1) * row_sum[col_slot]
    t_rows.index_add_(0, positions, weighted * own.unsqueeze(1))
    return t_cols, t_rows


def _softmax_chunk(logits: Tensor, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The log-sum-exp part of one chunk of the softmax loss: ``(sum over its rows of
    logsumexp(logits), softmax(logits) or None)``; the probabilities are built in the logits' memory.
    The targets' part (``- sum_j t_ij l_ij``, gradient ``- t``) is linear in the embeddings and is
    added by :class:`_ChunkedRowLoss` from :func:`_target_products`."""
    peak = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(peak).exp_()  # in place from here on
    sum_exp = probs.sum(dim=1, keepdim=True)
    total = (peak.view(-1) + sum_exp.view(-1).log()).sum()
    if not want_grad:
        return total, None
    return total, probs.div_(sum_exp)


def _sigmoid_chunk(logits: Tensor, targets: Tensor, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """One chunk of the sigmoid loss: ``(sum of -log sigmoid(label * logit), dloss/dlogits or None)``.

    With ``m = label * logit`` the gradient is ``-label * sigmoid(-m)``. ``targets`` (the positives
    mask as a float matrix) becomes the labels and ``logits`` the gradient, in place.
    """
    labels = targets.mul_(2).sub_(1)
    margins = logits.mul_(labels)
    total = -F.logsigmoid(margins).sum()
    if not want_grad:
        return total, None
    return total, margins.neg_().sigmoid_().mul_(labels).neg_()


class _ChunkedRowLoss(torch.autograd.Function):
    """The soft cross-entropy of ``s * rows @ cols.T`` against the rows' catalog targets, summed
    over the rows, computed ``chunk_size`` rows at a time, gradients included.

    For a row i with logits ``l_i = s * x_i @ Y.T``, probabilities ``p_i = softmax(l_i)`` and soft
    targets ``t_i`` (summing to 1), the loss is ``logsumexp(l_i) - t_i @ l_i`` and its gradient with
    respect to the logits is ``g_i = p_i - t_i``; then ``d/dx_i = s * g_i @ Y``,
    ``d/dY = s * g.T @ X`` and ``d/ds = sum(g * X @ Y.T) = sum_i x_i . (g_i @ Y)``. The forward pass
    accumulates these, the backward pass only scales them by the incoming gradient. The targets'
    terms are linear: ``t_i @ l_i = s * x_i . (t @ Y)_i`` and ``t @ Y``, ``t.T @ X`` are sums per
    catalog (:func:`_target_products`), so a chunk holds one ``chunk x C`` float matrix (the logits,
    turned into ``p`` in place). With ``chunk_size >= R`` it is the dense loss in one chunk: R x C
    logits, once, where autograd would keep the logits, the targets and the log-softmax.

    With ``bias`` (a tensor) it is the sigmoid loss instead (:func:`_dense_sigmoid_row_loss`):
    logits ``s * x_i @ Y.T + b``, the same ``d/dx``, ``d/dY`` and ``d/ds`` for its own ``g``, and
    ``d/db = sum(g)``. Its labels are a ``chunk x C`` matrix, and the logsigmoid of a chunk briefly
    needs a third one.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, cols: Tensor, scale: Tensor, row_groups: Tensor | None,
                col_groups: Tensor | None, positions: Tensor, chunk_size: int,
                bias: Tensor | None = None) -> Tensor:
        half = (torch.float16, torch.bfloat16)
        dtype = torch.float32 if rows.dtype in half or cols.dtype in half else rows.dtype
        x, y, s = rows.to(dtype), cols.to(dtype), scale.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        softmax = bias is None
        want_rows, want_cols, want_scale = ctx.needs_input_grad[:3]
        want_bias = bias is not None and ctx.needs_input_grad[7]
        want_any = want_rows or want_cols or want_scale or want_bias
        total = torch.zeros((), dtype=dtype, device=x.device)
        grad_rows = torch.empty_like(x) if want_rows else None
        grad_cols = torch.zeros_like(y) if want_cols else None
        grad_scale = torch.zeros((), dtype=dtype, device=x.device) if want_scale else None
        grad_bias = torch.zeros((), dtype=dtype, device=x.device) if want_bias else None
        if softmax:  # the targets' terms: t @ Y per row, t.T @ X per column
            t_cols, t_rows = _target_products(x, y, row_groups, col_groups, positions)
            total -= s * (x * t_cols).sum()
        for start in range(0, x.shape[0], chunk_size):
            stop = min(start + chunk_size, x.shape[0])
            part = x[start:stop]
            logits = (part @ y.T).mul_(s)
            if softmax:
                chunk_total, grad = _softmax_chunk(logits, want_any)
            else:
                logits.add_(b.reshape(()))
                targets = _positives(None if row_groups is None else row_groups[start:stop],
                                     col_groups, positions[start:stop], y.shape[0]).to(dtype)
                chunk_total, grad = _sigmoid_chunk(logits, targets, want_any)
            total += chunk_total
            if not want_any:
                continue
            if want_bias:
                grad_bias += grad.sum()
            rows_grad = grad @ y
            if softmax:
                rows_grad -= t_cols[start:stop]  # (p - t) @ Y
            if want_scale:
                grad_scale += (part * rows_grad).sum()
            if want_rows:
                grad_rows[start:stop] = rows_grad * s
            if want_cols:
                grad_cols.addmm_(grad.T, part)
        if want_cols:
            if softmax:
                grad_cols -= t_rows  # (p - t).T @ X
            grad_cols *= s
        ctx.save_for_backward(grad_rows, grad_cols, grad_scale, grad_bias)
        ctx.dtypes = (rows.dtype, cols.dtype, scale.dtype, None if bias is None else bias.dtype)
        ctx.shapes = (scale.shape, None if bias is None else bias.shape)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_rows, grad_cols, grad_scale, grad_bias = ctx.saved_tensors
        rows_dtype, cols_dtype, scale_dtype, bias_dtype = ctx.dtypes
        scale_shape, bias_shape = ctx.shapes
        out_rows = None if grad_rows is None else (grad_rows * grad_out).to(rows_dtype)
        out_cols = None if grad_cols is None else (grad_cols * grad_out).to(cols_dtype)
        out_scale = (None if grad_scale is None
                     else (grad_scale * grad_out).to(scale_dtype).reshape(scale_shape))
        out_bias = None if grad_bias is None else (grad_bias * grad_out).to(bias_dtype).reshape(bias_shape)
        return out_rows, out_cols, out_scale, None, None, None, None, out_bias


class ContrastiveLoss(nn.Module):
    """The contrastive loss as a strategy object: target mode, chunking and the ranks of the job are
    fixed when it is built.

    In a job of several processes (``torch.distributed`` initialised) every call gathers the
    embeddings of all ranks, with gradients, and their catalog ids: negatives and catalog positives
    are global. Each rank passes its own equally sized slice of the global batch, in rank order.

    - default: every rank computes the loss of the whole global batch (C x C logits per rank);
    - ``local_loss``: each rank computes its own R rows against all C columns (R x C logits, memory
      linear in the global batch); the value returned is this rank's share, and
      :meth:`global_value` gives the loss of the whole batch.

    In both modes, gradients averaged over ranks (what DDP does) equal the single-process gradients
    of the whole batch. ``chunk_size`` bounds the logits held at once (see
    :func:`contrastive_loss_rows`).

    ``text_text`` and ``image_image`` add the same loss within one modality, weighted: each title
    (photo) against the other titles (photos) of the batch, with the same targets. Under catalog
    targets two sellers' titles of one product are pulled together and titles of other products
    pushed away, so a title keeps what tells products apart even where the photo cannot show it
    (size, material). A row is always its own positive here too (its similarity to itself is the
    largest logit of its row), so the term is exact and as global as the cross-modal one.

    ``loss="sigmoid"`` computes the SigLIP loss (see the module's docstring) with the same targets,
    gathering, modes and chunking; the call then takes the model's ``logit_bias`` (its gradient flows
    like the scale's). The within-modality terms use the same scale and bias. The softmax loss
    ignores ``logit_bias``.
    """

    def __init__(self, targets: str = "catalog", *, loss: str = "softmax",
                 chunk_size: int | None = None, local_loss: bool = False, text_text: float = 0.0,
                 image_image: float = 0.0):
        super().__init__()
        _check_targets(targets)
        _check_loss(loss)
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ConfigError(f"loss chunk_size must be a positive integer, got {chunk_size!r}")
        for name, weight in (("text_text", text_text), ("image_image", image_image)):
            if not weight >= 0:
                raise ConfigError(f"loss weight {name} must be >= 0, got {weight!r}")
        self.targets = targets
        self.loss = loss
        self.chunk_size = chunk_size
        self.local_loss = local_loss
        self.text_text = text_text
        self.image_image = image_image

    def forward(self, image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
                group_ids: Tensor | None = None, logit_bias: Tensor | float | None = None) -> Tensor:
        bias = logit_bias if self.loss == "sigmoid" else None
        loss = self._pair(image_emb, text_emb, logit_scale, group_ids, bias)
        if self.text_text:
            loss = loss + self.text_text * self._pair(text_emb, text_emb, logit_scale, group_ids, bias)
        if self.image_image:
            loss = loss + self.image_image * self._pair(image_emb, image_emb, logit_scale, group_ids,
                                                        bias)
        return loss

    def _pair(self, image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
              group_ids: Tensor | None, logit_bias: Tensor | float | None = None) -> Tensor:
        kind = {} if self.loss == "softmax" else {"loss": self.loss, "logit_bias": logit_bias}
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return contrastive_loss(image_emb, text_emb, logit_scale, group_ids, targets=self.targets,
                                    chunk_size=self.chunk_size, **kind)
        _check_pair(image_emb, text_emb)
        groups = None if self.targets == "clip" else group_ids
        if groups is not None:
            _check_group_ids(groups, image_emb.shape[0])
            groups = groups.to(image_emb.device)
        all_image, all_text = gather_with_grad(image_emb), gather_with_grad(text_emb)
        all_groups = None if groups is None else gather(groups)
        if self.local_loss:
            offset = dist.get_rank() * image_emb.shape[0]
            return contrastive_loss_rows(image_emb, text_emb, all_image, all_text, logit_scale, groups,
                                         all_groups, offset, chunk_size=self.chunk_size, **kind)
        return contrastive_loss_rows(all_image, all_text, all_image, all_text, logit_scale, all_groups,
                                     all_groups, 0, chunk_size=self.chunk_size, **kind)

    def global_value(self, loss: Tensor) -> Tensor:
        """The loss of the whole global batch, detached: the same number on every rank."""
        return all_reduce_mean(loss) if self.local_loss else loss.detach()

    def extra_repr(self) -> str:
        return (f"targets={self.targets!r}, loss={self.loss!r}, chunk_size={self.chunk_size}, "
                f"local_loss={self.local_loss}, text_text={self.text_text}, "
                f"image_image={self.image_image}")
