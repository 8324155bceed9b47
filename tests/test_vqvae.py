"""The VQ-VAE model layer: original key names, structure, encode/decode, input checks, training pass."""
from __future__ import annotations

import pytest
import torch

import jukebox_fast
from jukebox_fast import hparams, make_vqvae
from jukebox_fast.models.resnet import Resnet1D

from conftest import read_keys_tsv


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = make_vqvae("tiny_vqvae").eval()
    model.init_codebooks(0.3 * torch.randn(2, 4096, 1))  # codes spread over the codebook
    return model


def test_state_dict_keys_and_shapes_equal_the_released_checkpoint(data_dir):
    expected = read_keys_tsv(data_dir / "vqvae.tsv")
    model = make_vqvae("vqvae")
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert got == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 1_485_763


def test_builds_on_the_meta_device_without_data(data_dir):
    with torch.device("meta"):
        model = make_vqvae("vqvae")
    assert all(t.is_meta for t in model.state_dict().values())
    model2 = make_vqvae("vqvae", device="meta")
    assert [k for k in model2.state_dict()] == [row[0] for row in read_keys_tsv(data_dir / "vqvae.tsv")]


def _stack_dilations(stack: Resnet1D) -> list[int]:
    return [block.dilation for block in stack.model]


def test_dilation_orders_match_the_original():
    model = make_vqvae("vqvae", device="meta")
    enc0 = model.encoders[0].level_blocks[0].model[0][1]
    dec0 = model.decoders[0].level_blocks[0].model[1][0]
    assert _stack_dilations(enc0) == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert _stack_dilations(dec0) == [2187, 729, 243, 81, 27, 9, 3, 1]
    assert _stack_dilations(model.decoders[2].level_blocks[1].model[1][0]) == [27, 9, 3, 1]
    cond = Resnet1D(8, 16, dilation_growth_rate=3, dilation_cycle=8, checkpoint_res=1)
    assert [b.dilation for b in cond.blocks] == [1, 3, 9, 27, 81, 243, 729, 2187] * 2
    assert all(k.startswith("blocks.") for k in cond.state_dict())


def test_encode_decode_shapes_and_levels(tiny):
    x = 0.3 * torch.randn(3, 2 * 4096, 1)
    zs = tiny.encode(x)
    assert [tuple(z.shape) for z in zs] == [(3, 1024), (3, 256), (3, 64)]
    assert all(z.dtype == torch.int64 for z in zs)
    assert zs[0].unique().numel() > 10
    for level in range(3):
        out = tiny.decode(zs[level:], start_level=level)
        assert out.shape == (3, 8192, 1) and out.dtype == torch.float32
    # Partial levels give the same codes as the full encode. Chunking the batch lets the strided
    # convolutions' BLAS pick other blockings (latents move by ~3e-7), which can swap a near tie.
    assert torch.equal(tiny.encode(x, start_level=1, end_level=2)[0], zs[1])
    assert all((a != b).float().mean() <= 0.01 for a, b in zip(tiny.encode(x, bs_chunks=2), zs))
    torch.testing.assert_close(tiny.decode(zs[:1], end_level=1, bs_chunks=3), tiny.decode(zs[:1], end_level=1))


def test_encode_accepts_any_float_dtype_like_the_original(tiny):
    x = 0.3 * torch.randn(1, 4096, 1, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(tiny.encode(x), tiny.encode(x.float())))


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.zeros(4096), r"shape \[batch, samples, 1\], got shape \(4096,\)"),
        (torch.zeros(1, 4096), r"shape \[batch, samples, 1\], got shape \(1, 4096\)"),
        (torch.zeros(1, 4096, 2), "expected 1 audio channel.*got 2 channels"),
        (torch.zeros(1, 100, 1), r"at least 128 samples \(one code of level 2\), got shape \(1, 100, 1\)"),
        (torch.zeros(1, 4096, 1, dtype=torch.int16), "expected float audio.*torch.int16"),
        (torch.zeros(0, 4096, 1), "non-empty batch"),
        (torch.zeros(1, 4096, 1, device="meta"), "audio is on meta but the model is on cpu"),
        ([0.0] * 128, "expected audio as a torch.Tensor"),
    ],
)
def test_bad_audio_is_a_clear_value_error(tiny, x, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(x)


def test_any_length_encodes_to_whole_codes_and_partial_encode_only_needs_its_own_hop(tiny):
    x = 0.3 * torch.randn(1, 8 * 101 + 5, 1)  # not a multiple of 8, 32 or 128
    assert [z.shape[1] for z in tiny.encode(x)] == [101, 25, 6]
    assert tiny.encode(x, end_level=1)[0].shape == (1, 101)
    with pytest.raises(ValueError, match=r"at least 32 samples \(one code of level 1\)"):
        tiny.encode(x[:, :20], end_level=2)
    assert tiny.encode(x[:, :20], end_level=1)[0].shape == (1, 2)


@pytest.mark.parametrize(
    "zs,kwargs,match",
    [
        (lambda: [torch.zeros(1, 8, dtype=torch.long)] * 2, {}, "expected a list of 3 code tensors"),
        (lambda: torch.zeros(1, 8, dtype=torch.long), {}, "got Tensor"),
        (lambda: [torch.zeros(1, 8)] * 3, {}, "codes of level 0 must be int64 or int32 code indices, got torch.float32"),
        (lambda: [torch.zeros(1, 8, dtype=torch.uint8)] * 3, {}, "must be int64 or int32 code indices, got torch.uint8"),
        (lambda: [torch.zeros(1, 0, dtype=torch.long)] * 3, {}, r"codes of level 0 are empty \(shape \(1, 0\)\)"),
        (lambda: [torch.zeros(1, 8, dtype=torch.long)] * 3, dict(bs_chunks=0), "bs_chunks must be an integer >= 1"),
        (lambda: [torch.zeros(8, dtype=torch.long)] * 3, {}, r"must be a \[batch, time\] tensor"),
        (lambda: [torch.full((1, 8), 256)] + [torch.zeros(1, 2, dtype=torch.long)] * 2, {},
         r"must lie in \[0, 256\), got values in \[256, 256\]"),
        (lambda: [torch.full((1, 8), -1)], dict(start_level=2), r"codes of level 2 must lie in \[0, 256\)"),
        (lambda: [torch.zeros(1, 8, dtype=torch.long)], dict(start_level=3), "start_level < end_level"),
    ],
)
def test_bad_codes_are_a_clear_value_error(tiny, zs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny.decode(zs(), **kwargs)


@pytest.mark.parametrize("spectral", [0.0, 0.5])
def test_training_pass_losses_metrics_and_gradients(spectral):
    torch.manual_seed(0)
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096, spectral=spectral)).train()
    x = 0.3 * torch.randn(2, 4096, 1)
    x_out, loss, metrics = model(x)
    assert x_out.shape == x.shape and loss.dim() == 0 and torch.isfinite(loss)
    for key in ("recons_loss", "spectral_loss", "multispectral_loss", "commit_loss", "spectral_convergence",
                "l1_loss", "l2_loss", "linf_loss", "recons_loss_l1", "recons_loss_l3", "multispectral_loss_l2",
                "entropy", "used_curr", "usage", "dk", "fit", "pn"):
        assert key in metrics and not metrics[key].requires_grad, key
    expected = (metrics["recons_loss"] + spectral * metrics["spectral_loss"]
                + model.hps.multispectral * metrics["multispectral_loss"] + model.hps.commit * metrics["commit_loss"])
    assert float(metrics["spectral_loss"]) > 0  # logged even when its weight is 0
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    enc_grad = model.encoders[2].level_blocks[0].model[0][0].weight.grad
    dec_grad = model.decoders[0].out.weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0  # straight-through reaches the encoder
    assert dec_grad is not None and dec_grad.abs().sum() > 0


def test_training_from_a_level_up_gives_those_levels_the_gradients_of_the_whole_pass():
    """start_level=1: levels 1 and 2 get what the whole pass gives them (their terms of the loss
    are the same), level 0 never runs: no gradient, its codebook never initialised."""
    torch.manual_seed(0)
    x = 0.3 * torch.randn(2, 4096, 1)
    whole = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096))
    part = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096))
    part.load_state_dict(whole.state_dict())
    whole.init_codebooks(x)
    for a, b in zip(whole.bottleneck.level_blocks, part.bottleneck.level_blocks):
        b.k.copy_(a.k)
    part.bottleneck.level_blocks[1].init = part.bottleneck.level_blocks[2].init = True
    whole.eval(), part.eval()  # no EMA step: both passes see the same codebooks
    x_whole, loss_whole, m_whole = whole(x)
    x_part, loss_part, m_part = part(x, start_level=1)
    assert "recons_loss_l1" not in m_part
    for key in ("recons_loss_l2", "recons_loss_l3", "multispectral_loss_l2", "multispectral_loss_l3"):
        torch.testing.assert_close(m_part[key], m_whole[key], rtol=0, atol=0)
    assert float(loss_part) < float(loss_whole)
    # The reconstruction it returns is level 1's: the whole pass's level-1 decode of the same codes.
    torch.testing.assert_close(x_part, whole.decode(whole.encode(x, start_level=1), start_level=1))
    loss_whole.backward(), loss_part.backward()
    for level in (1, 2):
        for (name, a), (_, b) in zip(whole.encoders[level].named_parameters(), part.encoders[level].named_parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name)
        torch.testing.assert_close(part.decoders[level].out.weight.grad, whole.decoders[level].out.weight.grad)
    assert all(p.grad is None for p in (*part.encoders[0].parameters(), *part.decoders[0].parameters()))
    # A model trained from level 1 refuses level 0, and says which levels it has.
    part.train()(x, start_level=1)
    assert part.first_trained_level == 1 and not part.bottleneck.level_blocks[0].init
    with pytest.raises(ValueError, match=r"level\(s\) \[0\] of this VQ-VAE were never trained.* level\(s\) \[1, 2\]"):
        part.encode(x)
    with pytest.raises(ValueError, match="never trained"):
        part.decode([torch.zeros(1, 8, dtype=torch.long)] * 3, start_level=0)
    assert [z.shape[1] for z in part.encode(x, start_level=1)] == [4096 // 32, 4096 // 128]
    with pytest.raises(ValueError, match="start_level < end_level"):
        part(x, start_level=3)


def test_levels_trained_apart_and_joined_are_the_levels_of_each_part():
    """end_level: a pass of level 1 alone gives level 1 the whole pass's terms; take_levels joins
    level 1 of one model and level 2 of another (weights, codebook and EMA state) into one."""
    torch.manual_seed(0)
    x = 0.3 * torch.randn(2, 4096, 1)
    hps = hparams.get("tiny_vqvae", sample_length=4096)
    whole = make_vqvae(hps).eval()
    whole.init_codebooks(x)
    _, _, m_whole = whole(x)
    _, _, m_one = whole(x, start_level=1, end_level=2)
    assert "recons_loss_l3" not in m_one and "recons_loss_l1" not in m_one
    torch.testing.assert_close(m_one["recons_loss_l2"], m_whole["recons_loss_l2"], rtol=0, atol=0)

    low, high = make_vqvae(hps).train(), make_vqvae(hps).train()  # different random weights
    low(x, start_level=1, end_level=2), high(x, start_level=2)  # a training pass each: EMA state set
    assert [b.init for b in low.bottleneck.level_blocks] == [False, True, False]
    joined = make_vqvae(hps).take_levels(low, [1]).take_levels(high, [2]).eval()
    assert [b.init for b in joined.bottleneck.level_blocks] == [False, True, True]
    for level, part in ((1, low), (2, high)):
        block, source = joined.bottleneck.level_blocks[level], part.bottleneck.level_blocks[level]
        assert torch.equal(block.k, source.k) and torch.equal(block.k_sum, source.k_sum)
        assert torch.equal(block.k_elem, source.k_elem) and block.k_sum is not source.k_sum
        only = dict(start_level=level, end_level=level + 1)
        z = part.eval().encode(x, **only)
        assert torch.equal(joined.encode(x, start_level=level)[0], z[0])
        assert torch.equal(joined.decode(z, **only), part.decode(z, **only))
    with pytest.raises(ValueError, match="never trained"):
        low.eval().encode(x, start_level=2)
    with pytest.raises(ValueError, match="same hyper-parameters"):
        joined.take_levels(make_vqvae(hparams.get("tiny_vqvae", sample_length=8192)), [1])


def test_eval_pass_leaves_codebooks_alone(tiny):
    before = [b.k.clone() for b in tiny.bottleneck.level_blocks]
    _, loss, metrics = tiny(0.3 * torch.randn(1, 4096, 1))
    assert "usage" not in metrics and torch.isfinite(loss)
    assert all(torch.equal(a, b.k) for a, b in zip(before, tiny.bottleneck.level_blocks))


def test_public_api_is_importable():
    assert jukebox_fast.make_vqvae is make_vqvae
    assert callable(jukebox_fast.load_vqvae) and callable(jukebox_fast.save_vqvae)


@pytest.mark.parametrize("mode,commit,ratio", [("ema", 0.02, 0.7), ("vqvae1", 0.25, 0.85)])
def test_a_few_training_steps_learn_the_clip(mode, commit, ratio):
    """EMA codebooks, restarts and the straight-through gradient together make the model learn.

    30 steps on one clip; measured here: the mean of the last 5 reconstruction losses is 0.5x
    the first (ema) and 0.7x (vqvae1, the VQ-VAE paper's beta 0.25); the bounds leave margin for
    other CPUs' rounding.
    """
    from jukebox_fast.demo import synth_clip
    from jukebox_fast.models.losses import calculate_bandwidth

    torch.manual_seed(0)
    clip = torch.from_numpy(synth_clip(0.5, seed=3))[:16384]
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096, codebook_mode=mode, commit=commit)).train()
    model.bandwidth = calculate_bandwidth([clip.numpy()])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x = clip.view(4, 4096, 1)
    recons = []
    for _ in range(30):
        _, loss, metrics = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recons.append(float(metrics["recons_loss"]))
    assert sum(recons[-5:]) / 5 < ratio * recons[0], recons
