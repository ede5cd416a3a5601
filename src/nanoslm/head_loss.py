"""LM head + cross-entropy in row chunks, so the (tokens x vocab) logits never exist at once.

With GPT-2's 50,257-id head the full logits of one 8K-token batch take 1.6 GB in float32 and
dominate a small model's step time and memory. Here each chunk's logits are made, turned into
the loss and (when training) straight into gradients, then dropped. Computing the gradients in the
forward pass costs no extra matmul: the loss is a scalar, so backward only rescales them.
"""

import torch

TINY = torch.finfo(torch.float32).tiny  # a target probability below it scores as -log(TINY) = 87.3 nats, not inf
CHUNK_ROWS = 1024  # rows per chunk: large enough for efficient matmuls, small enough that a chunk's logits stay ~200 MB


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, learn):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        for start in range(0, hidden.size(0), CHUNK_ROWS):
            h = hidden[start : start + CHUNK_ROWS]
            t = targets[start : start + CHUNK_ROWS]
            probs = torch.softmax(h @ weight.t(), dim=-1, dtype=torch.float32)  # one fused pass
            rows = torch.arange(t.numel(), device=t.device)
            nll = -probs[rows, t].clamp(min=TINY).log()
            if learn is not None:  # rows not learned count nothing: zeroed where they are small, not in probs
                keep = learn[start : start + CHUNK_ROWS, None]
                nll, h = nll * keep[:, 0], h * keep
            total += nll.sum()
            if needs_grad:
                # d(sum nll)/d logits = softmax - one_hot(target)
                probs[rows, t] -= 1.0
                probs = probs.to(hidden.dtype)
                grad = probs @ weight
                grad_hidden[start : start + CHUNK_ROWS] = grad if learn is None else grad * keep
                grad_weight += (probs.t() @ h).float()
        if needs_grad:
            # float16 keeps the head's gradient in float32 until backward scales it: summed over a large batch's
            # tokens it can pass float16's 65,504 before the GradScaler's scale (and the 1/tokens) reach it
            keep = torch.float32 if weight.dtype == torch.float16 else weight.dtype
            ctx.save_for_backward(grad_hidden, grad_weight.to(keep))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, grad_weight * grad_total, None, None


def head_loss(hidden, weight, targets, reduction: str = "mean", learn=None):
    """Cross-entropy of `hidden @ weight.T` against `targets`, in float32.

    hidden: (..., C); weight: (V, C); targets: (...) int64. learn: None to learn every target, or a bool mask of
    targets' shape (fine-tuning on conversations learns the assistant's turns only): the others add no loss and
    no gradient, and the mean is over the learned ones. Under autocast the matmuls run in the autocast dtype, as
    a plain nn.Linear + F.cross_entropy would.
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    learn = None if learn is None else learn.reshape(-1)
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        total = _ChunkedHeadLoss.apply(hidden, weight, targets, learn)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (targets.numel() if learn is None else learn.sum().clamp(min=1))
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
