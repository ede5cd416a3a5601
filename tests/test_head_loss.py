import math

import pytest
import torch
import torch.nn.functional as F

from nanoslm import head_loss as head_loss_module
from nanoslm.head_loss import head_loss

V, C = 37, 8  # a small vocabulary keeps the reference logits tiny


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """3 rows per chunk: the 10- and 14-row inputs below take several chunks, the last one partial."""
    monkeypatch.setattr(head_loss_module, "CHUNK_ROWS", 3)


def inputs(shape=(10,), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, C, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, C, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(0, V, shape, generator=g)
    return hidden, weight, targets


def reference(hidden, weight, targets, reduction="mean"):
    logits = hidden.reshape(-1, C) @ weight.T
    return F.cross_entropy(logits.float(), targets.reshape(-1), reduction=reduction)


def loss_and_grads(fn, hidden, weight, targets, reduction):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, reduction)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(10,), (2, 7)])
def test_matches_cross_entropy_in_float32(shape, reduction):
    hidden, weight, targets = inputs(shape)
    loss, gh, gw = loss_and_grads(head_loss, hidden, weight, targets, reduction)
    ref_loss, ref_gh, ref_gw = loss_and_grads(reference, hidden, weight, targets, reduction)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)
    assert gh.shape == hidden.shape and gw.shape == weight.shape


def test_chunk_size_does_not_change_the_result(monkeypatch):
    hidden, weight, targets = inputs((14,))
    monkeypatch.setattr(head_loss_module, "CHUNK_ROWS", 1024)  # one chunk
    one = loss_and_grads(head_loss, hidden, weight, targets, "sum")
    monkeypatch.setattr(head_loss_module, "CHUNK_ROWS", 4)  # 4 + 4 + 4 + 2
    many = loss_and_grads(head_loss, hidden, weight, targets, "sum")
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_sum_is_mean_times_count():
    hidden, weight, targets = inputs((2, 7))
    total = head_loss(hidden, weight, targets, "sum")
    mean = head_loss(hidden, weight, targets, "mean")
    torch.testing.assert_close(total, mean * 14, rtol=1e-6, atol=0)
    assert head_loss(hidden, weight, targets) == mean  # mean is the default


def test_gradients_scale_with_upstream_gradient():
    hidden, weight, targets = inputs()
    (3.0 * head_loss(hidden, weight, targets, "sum")).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    ref_gh, ref_gw = torch.autograd.grad(3.0 * reference(hidden, weight, targets, "sum"), (hidden, weight))
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_is_close_to_the_autocast_reference():
    hidden, weight, targets = inputs((2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gh, gw = loss_and_grads(head_loss, hidden, weight, targets, "mean")
        ref_loss, ref_gh, ref_gw = loss_and_grads(reference, hidden, weight, targets, "mean")
    assert loss.dtype == torch.float32
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype  # grads reach the float32 leaves
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-3)
    for g, ref in ((gh, ref_gh), (gw, ref_gw)):
        assert (g - ref).norm() / ref.norm() < 2e-2
    # and it really ran in bf16: not bit-identical to the float32 loss, but close to it
    f32 = reference(hidden, weight, targets).detach()
    assert loss != f32
    torch.testing.assert_close(loss, f32, rtol=2e-2, atol=2e-2)


def test_no_grad_gives_the_same_value():
    hidden, weight, targets = inputs((2, 7))
    with_grad = head_loss(hidden, weight, targets, "sum")
    with torch.no_grad():
        without = head_loss(hidden, weight, targets, "sum")
    assert not without.requires_grad
    assert without.item() == with_grad.item()
    plain = head_loss(hidden.detach(), weight.detach(), targets, "sum")  # inputs that need no grad
    assert not plain.requires_grad and plain.item() == with_grad.item()
    torch.testing.assert_close(without, reference(hidden, weight, targets, "sum").detach(), rtol=1e-6, atol=1e-6)


def test_gradient_only_for_weight():
    hidden, weight, targets = inputs()
    hidden = hidden.detach()
    head_loss(hidden, weight, targets).backward()
    (ref_gw,) = torch.autograd.grad(reference(hidden, weight, targets), (weight,))
    torch.testing.assert_close(weight.grad, ref_gw, rtol=1e-5, atol=1e-6)


def test_a_target_below_float32s_range_scores_87_nats_not_inf():
    """Its probability underflows (logit 200 below the best): the loss is capped at -log(TINY), the gradient exact."""
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[200.0], [0.0]], requires_grad=True)
    targets = torch.tensor([1])
    loss = head_loss(hidden, weight, targets, "sum")
    assert loss.item() == pytest.approx(-math.log(head_loss_module.TINY)) and math.isfinite(loss.item())
    loss.backward()
    # d loss / d logits = softmax - one_hot = [1, -1] (to float32's precision)
    torch.testing.assert_close(hidden.grad, torch.tensor([[200.0]]))
    torch.testing.assert_close(weight.grad, torch.tensor([[1.0], [-1.0]]))


def test_invalid_reduction_raises():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        head_loss(hidden, weight, targets, "none")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_targets_not_learned_score_and_teach_nothing_as_cross_entropys_ignore_index(reduction):
    """Fine-tuning on conversations learns the assistant's turns only: a user's turn must add no loss, no gradient."""
    hidden, weight, targets = inputs((14,))
    learn = torch.ones(14, dtype=torch.bool)
    learn[[0, 3, 4, 5, 13]] = False  # across chunk boundaries, first and last row included

    def masked(h, w, t, r):
        return head_loss(h, w, t, r, learn=learn)

    def ignoring(h, w, t, r):
        return F.cross_entropy((h.reshape(-1, C) @ w.T).float(), t.masked_fill(~learn, -1), reduction=r,
                               ignore_index=-1)

    loss, gh, gw = loss_and_grads(masked, hidden, weight, targets, reduction)
    ref_loss, ref_gh, ref_gw = loss_and_grads(ignoring, hidden, weight, targets, reduction)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)
    assert gh[~learn].abs().max() == 0


def test_learning_every_target_by_mask_equals_learning_them_without_one():
    """An all-true mask is the plain loss, to the bit: the masked path is the same arithmetic, not another one."""
    hidden, weight, targets = inputs((14,), dtype=torch.bfloat16)
    plain = loss_and_grads(head_loss, hidden, weight, targets, "mean")
    every = loss_and_grads(lambda h, w, t, r: head_loss(h, w, t, r, learn=torch.ones(14, dtype=torch.bool)),
                           hidden, weight, targets, "mean")
    for a, b in zip(plain, every):
        assert torch.equal(a, b)
