"""Training: loops resume to identical weights after an interruption, DDP over two gloo processes
gives the gradients of one process on the whole batch, and bad data paths fail clearly."""
from __future__ import annotations

import datetime
import gc
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from jukebox_fast import hparams
from jukebox_fast.audio import AudioError, write_wav
from jukebox_fast.demo import synth_clip
from jukebox_fast.train import AudioFolder, TrainConfig, train_prior, train_vqvae

CFG = dict(batch_size=2, lr=1e-3, warmup_steps=2, checkpoint_every=3, seed=3)
SHORT_VQVAE = hparams.get("tiny_vqvae", sample_length=8192)  # a quarter of its window: steps 4× faster


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("songs")
    for i, seconds in enumerate((2.0, 3.0)):
        write_wav(root / f"song{i}.wav", synth_clip(seconds, seed=i))
    return AudioFolder(root)


@pytest.fixture(scope="module")
def vqvae_path(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    train_vqvae(folder, out, SHORT_VQVAE, cfg=TrainConfig(steps=2, **CFG), progress=False)
    return out / "vqvae.pth.tar"


class Interrupted(Exception):
    pass


def interrupt_after(folder, calls, monkeypatch):
    """Make the folder's `calls`-th window draw raise, as a Ctrl-C in the middle of a run would."""
    real = folder.windows
    count = {"n": 0}

    def windows(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(folder, "windows", windows)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", ["vqvae", "top prior", "upsampler"])
def test_interrupted_run_resumes_to_identical_weights(kind, folder, vqvae_path, tmp_path, monkeypatch):
    def train(out, resume=False):
        cfg = TrainConfig(steps=7, **CFG)
        if kind == "vqvae":  # on short windows: resuming, not the window, is under test
            return train_vqvae(folder, out, SHORT_VQVAE, cfg=cfg, resume=resume, progress=False)
        preset = "tiny_top_prior" if kind == "top prior" else "tiny_upsampler"
        return train_prior(folder, out, vqvae_path, preset, cfg=cfg, resume=resume, progress=False)

    straight, summary = train(tmp_path / "straight")
    with monkeypatch.context() as m:
        interrupt_after(folder, 5, m)  # steps 1-4 done, checkpoint at 3, killed drawing step 5's batch
        with pytest.raises(Interrupted):
            train(tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed, resumed_summary = train(tmp_path / "resumed", resume=True)
    assert resumed_summary["resumed_from"] == 3
    assert resumed_summary["losses"] == summary["losses"]
    assert_same(weights(resumed), weights(straight))


def test_loss_goes_down(folder, tmp_path):
    _, summary = train_vqvae(folder, tmp_path, SHORT_VQVAE, cfg=TrainConfig(steps=12, **{**CFG, "batch_size": 1}), progress=False)
    first, last = summary["losses"][:3], summary["losses"][-3:]
    assert sum(last) < sum(first), summary["losses"]


def test_a_vqvae_trained_from_level_1_saves_loads_and_refuses_level_0(folder, tmp_path):
    from jukebox_fast import load_vqvae

    cfg = TrainConfig(steps=2, **CFG)
    model, summary = train_vqvae(folder, tmp_path, SHORT_VQVAE, cfg=cfg, progress=False, start_level=1)
    assert len(summary["losses"]) == 2 and model.first_trained_level == 1
    loaded = load_vqvae(tmp_path / "vqvae.pth.tar")
    assert loaded.first_trained_level == 1
    x = folder.clips[0][:8192].view(1, -1, 1)
    with pytest.raises(ValueError, match="never trained"):
        loaded.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x, start_level=1), model.encode(x, start_level=1)))
    with pytest.raises(ValueError, match="other settings \\(start_level: 1 -> "):  # resume only the same levels
        train_vqvae(folder, tmp_path, SHORT_VQVAE, cfg=TrainConfig(steps=3, **CFG), progress=False, resume=True)
    with pytest.raises(ValueError, match="start_level must be one of this VQ-VAE's levels, 0..2, got 3"):
        train_vqvae(folder, tmp_path / "other", SHORT_VQVAE, cfg=cfg, progress=False, start_level=3)
    for end in (1, 4, "2"):
        with pytest.raises(ValueError, match=f"end_level must be above start_level \\(1\\) and at most 3, got {end!r}"):
            train_vqvae(folder, tmp_path / "other", SHORT_VQVAE, cfg=cfg, progress=False, start_level=1, end_level=end)
    with pytest.raises(ValueError, match="other settings \\(end_level: None -> 2\\)"):  # resume only the same levels
        train_vqvae(folder, tmp_path, SHORT_VQVAE, cfg=cfg, progress=False, resume=True, start_level=1, end_level=2)


def test_bad_data_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="training data folder not found"):
        AudioFolder(tmp_path / "missing")
    with pytest.raises(AudioError, match="no audio files under"):
        AudioFolder(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(AudioError, match="broken.wav"):
        AudioFolder(tmp_path, bad_files="stop")
    with pytest.warns(UserWarning, match="skipping .*broken.wav"), \
            pytest.raises(AudioError, match="no usable audio file under .*every one was skipped"):
        AudioFolder(tmp_path)


def test_files_with_nan_or_inf_are_skipped_with_a_warning_or_stop_the_run(tmp_path):
    good, bad = synth_clip(1.0, seed=1), synth_clip(1.0, seed=2)
    bad[1234] = float("nan")
    write_wav(tmp_path / "a_good.wav", good)
    soundfile = pytest.importorskip("soundfile")  # a float wav keeps the NaN (PCM could not hold it)

    soundfile.write(tmp_path / "b_nan.wav", bad, 44100, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"skipping .*b_nan.wav holds 1 non-finite \(NaN or inf\) sample"):
        folder = AudioFolder(tmp_path)
    assert [p.name for p in folder.files] == ["a_good.wav"]
    with pytest.raises(AudioError, match=r"b_nan.wav holds 1 non-finite .*--bad-files skip"):
        AudioFolder(tmp_path, bad_files="stop")


def test_files_shorter_than_the_window_are_skipped_with_a_warning(tmp_path):
    write_wav(tmp_path / "long.wav", synth_clip(1.0, seed=1))
    write_wav(tmp_path / "short.wav", synth_clip(1025 / 44100, seed=2))  # 1,025 samples
    with pytest.warns(UserWarning, match=r"skipping .*short.wav: 1025 samples .* shorter than one training window"):
        _, summary = train_vqvae(tmp_path, tmp_path / "run", cfg=TrainConfig(steps=1, batch_size=1), progress=False)
    assert summary["steps"] == 1
    with pytest.raises(AudioError, match="short.wav: 1025 samples"):
        train_vqvae(tmp_path, tmp_path / "run2", cfg=TrainConfig(steps=1, batch_size=1), progress=False,
                    bad_files="stop")


def test_a_finished_run_is_not_trained_over_without_resume_or_overwrite(folder, vqvae_path, tmp_path):
    cfg = TrainConfig(steps=1, **CFG)
    with pytest.raises(FileExistsError, match=rf"{vqvae_path.parent} already holds a run \(checkpoint.pt, "
                                              r"vqvae.pth.tar\): pass --resume .* --overwrite"):
        train_vqvae(folder, vqvae_path.parent, SHORT_VQVAE, cfg=cfg, progress=False)
    before = vqvae_path.stat().st_mtime_ns
    run = tmp_path / "vq"
    train_vqvae(folder, run, SHORT_VQVAE, cfg=cfg, progress=False)
    train_vqvae(folder, run, SHORT_VQVAE, cfg=TrainConfig(steps=1, **{**CFG, "seed": 4}), progress=False,
                overwrite=True)
    assert vqvae_path.stat().st_mtime_ns == before
    train_prior(folder, tmp_path / "up", vqvae_path, "tiny_upsampler", cfg, progress=False)
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoint.pt, prior_level_1.pth.tar\)"):
        train_prior(folder, tmp_path / "up", vqvae_path, "tiny_upsampler", cfg, progress=False)


def test_a_preset_of_the_other_kind_is_refused(folder, vqvae_path, tmp_path):
    with pytest.raises(ValueError, match=r"preset 'tiny_top_prior' is a prior, not a VQ-VAE \(VQ-VAE presets: "
                                         r"tiny_vqvae, vqvae\)"):
        train_vqvae(folder, tmp_path, "tiny_top_prior")
    with pytest.raises(ValueError, match=r"preset 'tiny_vqvae' is not a prior \(prior presets: prior_1b_lyrics"):
        train_prior(folder, tmp_path, vqvae_path, "tiny_vqvae")


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainConfig(steps=0)


# -- data parallel --------------------------------------------------------------------------------
# Each of two gloo processes takes half of one batch; the gradients they end with must be those
# of one process on the whole batch (the losses are means over the batch).
def _vqvae_case():
    from jukebox_fast import make_vqvae

    torch.manual_seed(11)
    x = 0.3 * torch.randn(4, 4096, 1)
    torch.manual_seed(5)
    model = make_vqvae("tiny_vqvae")
    model.init_codebooks(x)
    return model.train(), (x,), lambda m, x: m(x)[1]


def _prior_case():
    from jukebox_fast import make_prior
    from jukebox_fast.sample import Song

    torch.manual_seed(5)
    prior = make_prior("tiny_top_prior").float().train()
    z = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(2))
    y = torch.cat([Song(0, (0,), 44100 * (2 + i), offset=128 * i).labels(prior, 0, 1) for i in range(4)])
    return prior, (z, y), lambda m, z, y: m([z], y)[0]


CASES = {"vqvae": _vqvae_case, "prior": _prior_case}


def _full_grads(model):
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad  # FSDP: gather the shards
            out[n] = g.clone()
    return out


def _join(rank: int, world: int, store: str) -> None:
    """Join the two-process group through a file in the test's own folder (no port that another
    test or run could take between choosing it and binding it), with a deadline on every
    collective, so a rank left waiting fails in a minute instead of gloo's default 30."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))


def _worker(rank, world, store, out, case, fsdp):
    _join(rank, world, store)
    torch.set_num_threads(1)
    from jukebox_fast.train.loop import _wrap, distributed_setup

    assert distributed_setup("cpu") == (rank, world)
    model, batch, loss_of = CASES[case]()
    wrapped = _wrap(model, TrainConfig(fsdp=fsdp), world)
    loss_of(wrapped, *(t.chunk(world)[rank] for t in batch)).backward()
    grads = _full_grads(model)
    if rank == 0:
        torch.save(grads, out)
    # The DDP reducer must go before its process group (destroying it after aborted a worker
    # now and then), and no rank may tear the group down while another still talks to it.
    del wrapped, model
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _spawn_two(worker, args, deadline_s: float = 90.0) -> None:
    """Two worker processes; past the deadline (below the per-test limit) they are killed and the
    test fails, though with :func:`_join` nothing should ever wait that long."""
    ctx = mp.spawn(worker, args=args, nprocs=2, join=False)
    end = time.monotonic() + deadline_s
    while not ctx.join(timeout=5):
        if time.monotonic() > end:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the two worker processes did not end within {deadline_s:.0f} s")


@pytest.mark.parametrize("case, fsdp", [("vqvae", False), ("prior", False), ("prior", True)],
                         ids=["ddp-vqvae", "ddp-prior", "fsdp-prior"])
def test_two_processes_get_the_gradients_of_one_on_the_whole_batch(case, fsdp, tmp_path):
    out = tmp_path / "grads.pt"
    _spawn_two(_worker, (2, str(tmp_path / "store"), str(out), case, fsdp))
    parallel = torch.load(out)
    # One thread, as each worker: oneDNN's reductions depend on the thread count, and through
    # the VQ-VAE that alone moves some gradients by 1e-3 of their tensor's largest element.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch, loss_of = CASES[case]()
        loss_of(model, *batch).backward()
    finally:
        torch.set_num_threads(threads)
    single = _full_grads(model)
    assert parallel.keys() == single.keys() and len(single) > 10
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def _fit_worker(rank, world, store, root, fsdp):
    """Under two processes: 4 steps straight, and 2 steps then a resumed run to 4."""
    _join(rank, world, store)
    torch.set_num_threads(1)
    from pathlib import Path

    from jukebox_fast.train.loop import distributed_setup, fit

    distributed_setup("cpu")
    _, batch, loss_of = _prior_case()

    def next_batch(gen):
        rows = torch.randint(0, 4, (2,), generator=gen)
        return tuple(t[rows] for t in batch)

    def run(out, steps, resume):
        model = _prior_case()[0]
        fit(model, lambda m, b: (loss_of(m, *b), {}), next_batch,
            TrainConfig(steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, fsdp=fsdp),
            out, resume=resume, progress=False)

    root = Path(root)
    run(root / "straight", 4, False)
    run(root / "resumed", 2, False)
    run(root / "resumed", 4, True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _split_view_worker(rank, world, store, root):
    """Rank 0 sees a checkpoint to resume from, rank 1 (another folder) does not."""
    _join(rank, world, store)
    torch.set_num_threads(1)
    from pathlib import Path

    from jukebox_fast.train.loop import fit

    root = Path(root)
    _, batch, loss_of = _prior_case()
    try:
        fit(_prior_case()[0], lambda m, b: (loss_of(m, *b), {}), lambda gen: batch,
            TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2),
            root / ("seen" if rank == 0 else f"unseen{rank}"), resume=True, progress=False)
    except RuntimeError as e:
        (root / f"error{rank}.txt").write_text(str(e))
    torch.distributed.barrier()  # neither tears the group down while the other still uses it
    torch.distributed.destroy_process_group()


def test_ranks_that_disagree_about_resuming_fail_instead_of_waiting_forever(tmp_path):
    # The stall once seen in the two-process tests: rank 1 started its resumed run before rank 0
    # had renamed the checkpoint into place, so one rank resumed (a collective scatter of the
    # optimiser state) and the other started afresh (FSDP's all-gather), each waiting on the other.
    # Now rank 0's save ends in a barrier, and ranks that still see different folders say so.
    one = tmp_path / "one"
    _spawn_two(_fit_worker, (2, str(tmp_path / "store0"), str(one), False))
    (tmp_path / "seen").mkdir()
    os.replace(one / "resumed" / "checkpoint.pt", tmp_path / "seen" / "checkpoint.pt")
    _spawn_two(_split_view_worker, (2, str(tmp_path / "store1"), str(tmp_path)))
    for rank in (0, 1):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "visible to rank(s) [0] but not to rank(s) [1]" in message, message


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_run_resumes_to_identical_weights(fsdp, tmp_path):
    _spawn_two(_fit_worker, (2, str(tmp_path / "store"), str(tmp_path), fsdp))
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 4 and straight["world"] == 2
    assert resumed["losses"] == straight["losses"]
    assert_same(resumed["model"], straight["model"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision, folder, vqvae_path, tmp_path):
    cfg = TrainConfig(steps=2, precision=precision, **{**CFG, "batch_size": 1})
    _, summary = train_prior(folder, tmp_path, vqvae_path, "tiny_top_prior", cfg=cfg, progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 2 and all(torch.isfinite(torch.tensor(summary["losses"])))
    # fp16 carries a gradient scaler, whose state resumes with the run
    assert (saved["scaler"] != {}) == (precision == "fp16")


def test_the_conditioner_recomputes_only_where_memory_is_short(folder, vqvae_path, tmp_path, monkeypatch):
    from jukebox_fast import hparams, memory
    from jukebox_fast.models.prior import make_prior
    from jukebox_fast.models.resnet import Resnet1D, set_recompute
    from jukebox_fast.train import models as train_models

    def recomputing(model) -> list[bool]:
        return [m.recompute for m in model.modules() if isinstance(m, Resnet1D) and m.checkpoint_res == 1]

    # the same gradients either way: recomputing trades time for memory, nothing else
    torch.manual_seed(0)
    prior = make_prior("tiny_upsampler").train()
    zs = [torch.randint(0, prior.bins, (2, prior.hps.n_ctx)),
          torch.randint(0, prior.bins, (2, prior.hps.n_ctx // prior.cond_downsample))]
    y = torch.tensor([[44100 * 60, 0, 44100, 0, 0, -1, -1, -1, -1]] * 2)
    grads = []
    for on in (True, False):
        prior.zero_grad()
        set_recompute(prior, on)
        prior(zs, y)[0].backward()
        grads.append([p.grad.clone() for p in prior.parameters() if p.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads)) and len(grads[0]) == len(grads[1]) > 0
    hps, vq = hparams.get("tiny_upsampler"), hparams.get("tiny_vqvae")
    assert memory.training_step_peak(hps, vq, 4, True) < memory.training_step_peak(hps, vq, 4, False)

    cfg = TrainConfig(steps=1, **CFG)
    model, _ = train_prior(folder, tmp_path / "plenty", vqvae_path, "tiny_upsampler", cfg, progress=False)
    assert recomputing(model) and not any(recomputing(model))  # memory to spare: activations kept
    step = memory.training_step_peak(hps, vq, cfg.batch_size, False)
    monkeypatch.setattr(train_models, "available_memory", lambda device: int(1.05 * step) + 2**20)
    model, _ = train_prior(folder, tmp_path / "short", vqvae_path, "tiny_upsampler", cfg, progress=False)
    assert all(recomputing(model))


@pytest.mark.parametrize("preset", ["tiny_top_prior", "tiny_upsampler"])
def test_cached_codes_are_slices_of_each_clip_encoded_once(preset, folder, vqvae_path, tmp_path, monkeypatch):
    from jukebox_fast import hparams
    from jukebox_fast.checkpoint import load_vqvae
    from jukebox_fast.train import ClipCodes

    vq = load_vqvae(vqvae_path).eval()
    level, n_ctx = hparams.get(preset).level, hparams.get(preset).n_ctx
    end = min(level + 2, 3)
    codes = ClipCodes(folder, vq, level, end, chunk=3 * 4096)  # pieces: a 2 s clip is encoded in 8 of them
    hops = vq.hps.hop_lengths[level:end]
    for clip, zs in zip(folder.clips, codes.codes):
        n = clip.shape[0] // hops[-1] * hops[-1]
        whole = vq.encode(clip[:n].view(1, n, 1), start_level=level, end_level=end)
        assert [z.shape[0] for z in zs] == [n // h for h in hops]
        # away from the pieces' edges (the encoder's receptive field), the same codes as one encode,
        # up to near-ties: a piece's convolutions may round differently from the whole clip's (the
        # blocking depends on the length), so two codes the latent is equally near may swap
        x_in = vq.preprocess(clip[:n].view(1, n, 1))
        for lv, z, w, h in zip(range(level, end), zs, whole, hops):
            inside = torch.ones(n // h, dtype=torch.bool)
            for edge in range(0, n + 1, 3 * 4096):
                inside[max(0, (edge - 2048) // h): (edge + 2048) // h] = False
            assert inside.sum() > 0
            differ = inside & (z != w[0])
            assert differ.sum() <= 0.01 * inside.sum(), f"level {lv}: {int(differ.sum())} of {int(inside.sum())} codes differ"
            if differ.any():
                latent = vq.encoders[lv](x_in)[-1][0].T[differ]  # [m, emb_width]
                book = vq.bottleneck.level_blocks[lv].k
                gap = ((latent - book[z[differ]]) ** 2).sum(1) - ((latent - book[w[0][differ]]) ** 2).sum(1)
                assert gap.abs().max() <= 1e-4 * (latent ** 2).sum(1).max(), "a differing code is no near-tie"
    zs, offsets, totals = codes.windows(n_ctx, 5, torch.Generator().manual_seed(0))
    assert [tuple(z.shape) for z in zs] == [(5, n_ctx * hops[0] // h) for h in hops]
    for b, (o, t) in enumerate(zip(offsets.tolist(), totals.tolist())):
        assert o % hops[-1] == 0 and o + n_ctx * hops[0] <= t
        clip = next(i for i, c in enumerate(folder.clips) if c.shape[0] == t)  # the clips' lengths differ
        for z, whole, h in zip(zs, codes.codes[clip], hops):
            assert torch.equal(z[b], whole[o // h: o // h + z.shape[1]])

    # train_prior draws its batches from them, records the choice, and resumes the same way
    calls = []
    monkeypatch.setattr(folder, "windows", lambda *a, **k: calls.append(1))  # audio windows: never drawn
    cfg = TrainConfig(steps=4, **CFG)
    _, summary = train_prior(folder, tmp_path, vqvae_path, preset, cfg=cfg, progress=False, cache_codes=True)
    assert not calls and len(summary["losses"]) == 4 and all(torch.isfinite(torch.tensor(summary["losses"])))
    with pytest.raises(Exception, match="cache_codes"):  # other settings than the run being resumed
        train_prior(folder, tmp_path, vqvae_path, preset, cfg=TrainConfig(steps=5, **CFG), resume=True,
                    progress=False)
