"""Codebooks: data initialisation, the EMA update with random restarts, restore, and the VQ-VAE-1 mode."""
from __future__ import annotations

import math

import pytest
import torch

from jukebox_fast import hparams, make_vqvae
from jukebox_fast.models.bottleneck import BottleneckBlock


def _rows(t: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in t}


def test_init_from_data_takes_rows_of_the_batch():
    block = BottleneckBlock(16, 4, mu=0.99)
    x = torch.randn(100, 4)
    block.init_k(x)
    assert block.init and _rows(block.k) <= _rows(x) and len(_rows(block.k)) == 16
    torch.testing.assert_close(block.k_sum, block.k)
    assert torch.equal(block.k_elem, torch.ones(16))


def test_init_from_a_small_batch_tiles_it_with_small_noise():
    block = BottleneckBlock(64, 8, mu=0.99)
    x = torch.randn(10, 8)
    block.init_k(x)
    nearest = torch.cdist(block.k, x).min(dim=1).values
    assert float(nearest.max()) < 0.05  # noise std is 0.01 / sqrt(8)
    assert len(_rows(block.k)) == 64


def _original_update(k_sum, k_elem, x, codes, candidates, mu, threshold):
    """The original update_k, written out with a one-hot matrix as it does."""
    k_bins = k_sum.shape[0]
    onehot = torch.zeros(k_bins, x.shape[0])
    onehot.scatter_(0, codes.view(1, -1), 1)
    new_sum = mu * k_sum + (1 - mu) * (onehot @ x)
    new_elem = mu * k_elem + (1 - mu) * onehot.sum(-1)
    usage = (new_elem.view(-1, 1) >= threshold).float()
    k = usage * (new_sum / new_elem.view(-1, 1)) + (1 - usage) * candidates
    return new_sum, new_elem, k, onehot.sum(-1)


def test_ema_update_and_random_restarts_match_the_original_rule(monkeypatch):
    k_bins, width, mu = 32, 6, 0.9
    block = BottleneckBlock(k_bins, width, mu=mu, threshold=1.0)
    block.init_k(torch.randn(200, width))
    # Let half the codes go unused long enough to fall under the threshold.
    block.k_elem[: k_bins // 2] = 0.5
    k_sum, k_elem = block.k_sum.clone(), block.k_elem.clone()
    x = torch.randn(300, width)
    codes, _ = block.quantise(x)
    candidates = torch.randn(k_bins, width)
    monkeypatch.setattr(block, "_random_rows", lambda _x: candidates)
    old_k = block.k.clone()
    counts = torch.bincount(codes, minlength=k_bins)
    sums = torch.zeros(k_bins, width).index_add_(0, codes, x)
    metrics = block.update_k(x, counts, sums)

    exp_sum, exp_elem, exp_k, counts = _original_update(k_sum, k_elem, x, codes, candidates, mu, 1.0)
    torch.testing.assert_close(block.k_sum, exp_sum)
    torch.testing.assert_close(block.k_elem, exp_elem)
    torch.testing.assert_close(block.k, exp_k)
    restarted = exp_elem < 1.0
    assert restarted.any() and (~restarted).any()
    assert torch.equal(block.k[restarted], candidates[restarted])  # dead codes restart on candidates
    prob = counts / counts.sum()
    torch.testing.assert_close(metrics["entropy"], -(prob * torch.log(prob + 1e-8)).sum())
    assert int(metrics["used_curr"]) == int((counts >= 1.0).sum())
    assert int(metrics["usage"]) == int((~restarted).sum())
    torch.testing.assert_close(metrics["dk"], torch.linalg.vector_norm(block.k - old_k) / math.sqrt(k_bins * width))


def test_restore_k_starts_the_ema_from_a_loaded_codebook():
    block = BottleneckBlock(8, 3, mu=0.99)
    block.k.copy_(torch.randn(8, 3))
    block.restore_k(num_tokens=80, threshold=2.0)
    torch.testing.assert_close(block.k_sum, block.k * 10)
    assert torch.equal(block.k_elem, torch.full((8,), 10.0))
    assert block.threshold == 2.0 and block.init


def test_training_forward_initialises_then_updates_every_level():
    torch.manual_seed(0)
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096)).train()
    assert not any(b.init for b in model.bottleneck.level_blocks)
    x = 0.3 * torch.randn(2, 4096, 1)
    model(x)
    first = [b.k.clone() for b in model.bottleneck.level_blocks]
    assert all(b.init and b.k.abs().sum() > 0 for b in model.bottleneck.level_blocks)
    model(x)
    assert all(not torch.equal(a, b.k) for a, b in zip(first, model.bottleneck.level_blocks))


def test_straight_through_passes_the_gradient_unchanged():
    block = BottleneckBlock(16, 4, mu=0.99)
    block.init_k(torch.randn(64, 4))
    block.eval()
    x = torch.randn(2, 4, 5, requires_grad=True)
    out = block(x, update_k=False)
    assert out.codes.shape == (2, 5)
    torch.testing.assert_close(out.quantised.detach(), block.decode(out.codes))
    g = torch.randn_like(x)
    (out.quantised * g).sum().backward()
    torch.testing.assert_close(x.grad, g)
    rows = x.detach().permute(0, 2, 1).reshape(-1, 4)
    torch.testing.assert_close(out.commit_loss, (block.k[out.codes.view(-1)] - rows).square().mean())
    assert float(out.codebook_loss) == 0.0


def test_vqvae1_mode_learns_the_codebook_by_gradient():
    block = BottleneckBlock(16, 4, mu=0.99, codebook_mode="vqvae1")
    assert isinstance(block.k, torch.nn.Parameter)
    assert list(block.state_dict()) == ["k"]
    x = torch.randn(2, 4, 50)
    out = block(x)  # first training call initialises from data, never by EMA
    assert block.init and block.k_sum is not None
    rows = x.permute(0, 2, 1).reshape(-1, 4)
    expected = (block.k.detach()[out.codes.view(-1)] - rows).square().mean()
    torch.testing.assert_close(out.codebook_loss.detach(), expected)
    out.codebook_loss.backward()
    assert block.k.grad is not None and block.k.grad.abs().sum() > 0
    k_before = block.k.detach().clone()
    block(x)  # no EMA step in this mode
    assert torch.equal(block.k.detach(), k_before)


def test_vqvae1_mode_in_the_full_model_adds_the_codebook_loss():
    torch.manual_seed(0)
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096, codebook_mode="vqvae1")).train()
    assert [k for k in model.state_dict() if k.startswith("bottleneck")] == [
        f"bottleneck.level_blocks.{i}.k" for i in range(3)]
    # Batch 3: more latent rows than codes at level 1, so not every row is itself a code.
    _, loss, metrics = model(0.3 * torch.randn(3, 4096, 1))
    expected = (metrics["recons_loss"] + metrics["multispectral_loss"] + model.hps.commit * metrics["commit_loss"]
                + metrics["codebook_loss"])
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert all(b.k.grad is not None and b.k.grad.abs().sum() > 0 for b in model.bottleneck.level_blocks)


def test_wrong_latent_width_is_an_error():
    with pytest.raises(ValueError, match=r"latents \[N, 4, T\], got \(2, 5, 3\)"):
        BottleneckBlock(8, 4, mu=0.99).encode(torch.randn(2, 5, 3))
