"""Checkpoints: original and own formats, HF key names, atomic writes, and clear errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import jukebox_fast.checkpoint as ckpt
from jukebox_fast import CheckpointError, hparams, load_vqvae, make_vqvae, save_vqvae
from jukebox_fast.checkpoint import atomic_save, hf_to_openai, openai_to_hf, openai_to_hf_key


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096)).train()
    model(0.3 * torch.randn(2, 4096, 1))  # initialises codebooks and EMA state
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


HF_PREFIX = {"vqvae.tsv": "vqvae.", "prior_5b.tsv": "priors.0.", "prior_5b_lyrics.tsv": "priors.0.",
             "prior_1b_lyrics.tsv": "priors.0.", "upsampler_level_1.tsv": "priors.1.",
             "upsampler_level_0.tsv": "priors.2."}


def test_hf_key_mapping_matches_the_reference_table_for_every_released_file(data_dir):
    rows = [line.split("\t") for line in (data_dir / "openai_to_hf_keys.tsv").read_text().splitlines()]
    assert len(rows) == 5619 and {f for f, _, _ in rows} == set(HF_PREFIX)
    for file, openai, hf in rows:
        assert HF_PREFIX[file] + openai_to_hf_key(openai) == hf, (file, openai)
    vq = [(openai, hf) for file, openai, hf in rows if file == "vqvae.tsv"]
    sd = {openai: i for i, (openai, _) in enumerate(vq)}
    as_hf = openai_to_hf(sd, prefix="vqvae.")
    assert as_hf == {hf: i for i, (_, hf) in enumerate(vq)}
    assert hf_to_openai(as_hf) == sd  # and back, proj_out's step count recovered from the keys


def test_own_format_round_trip_keeps_weights_hparams_ema_and_bandwidth(tiny, tmp_path):
    tiny.bandwidth.l2 = 0.05
    path = save_vqvae(tiny, tmp_path / "sub" / "vqvae.pth.tar", step=7)
    loaded = load_vqvae(path)
    assert loaded.hps == tiny.hps and not loaded.training
    assert _same_weights(loaded, tiny)
    assert loaded.bandwidth.l2 == 0.05
    for a, b in zip(loaded.bottleneck.level_blocks, tiny.bottleneck.level_blocks):
        assert a.init and torch.equal(a.k_sum, b.k_sum) and torch.equal(a.k_elem, b.k_elem)
    assert torch.load(path, weights_only=True)["step"] == 7


def _original_file(model, path, legacy=False, fp16=False, ddp=False):
    """A checkpoint as the original writes it: hps with numpy numbers, module. prefixes, fp16 weights."""
    sd = {("module." if ddp else "") + k: (v.half() if fp16 and v.is_floating_point() else v)
          for k, v in model.state_dict().items()}
    hps = {**model.hps.to_dict(), "sample_length": np.int64(0), "lr": np.float64(3e-4),
           "restore_vqvae": "", "bandwidth": {"l2": np.float64(0.1)}, "prior_width": 4800}
    torch.save({"hps": hps, "model": sd, "opt": None, "step": np.int64(10)}, path,
               _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True])
def test_original_format_loads_with_numpy_hps_ddp_prefix_and_fp16_upcast(tiny, tmp_path, legacy):
    path = tmp_path / "vqvae.pth.tar"
    _original_file(tiny, path, legacy=legacy, fp16=True, ddp=True)
    loaded = load_vqvae(path)
    assert loaded.hps.l_bins == tiny.hps.l_bins and loaded.hps.width == tiny.hps.width
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, tiny.state_dict()[key].half().float()), key
    assert all(b.init for b in loaded.bottleneck.level_blocks)


def test_released_architecture_from_a_file_without_hps(tmp_path):
    model = make_vqvae("vqvae")
    torch.save({"model": model.state_dict()}, tmp_path / "v.pth.tar")
    loaded = load_vqvae(tmp_path / "v.pth.tar")
    assert loaded.hps == hparams.get("vqvae") and _same_weights(loaded, model)


def test_hf_named_state_dict_loads(tiny, tmp_path):
    torch.save(openai_to_hf(tiny.state_dict(), prefix="vqvae."), tmp_path / "hf.bin")
    assert _same_weights(load_vqvae(tmp_path / "hf.bin", hparams=tiny.hps), tiny)


def test_load_to_a_device_argument(tiny, tmp_path):
    path = save_vqvae(tiny, tmp_path / "v.pth.tar")
    assert load_vqvae(path, device="cpu").decoders[0].out.weight.device.type == "cpu"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth.tar"):
        load_vqvae(tmp_path / "nope.pth.tar")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_vqvae(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_file_is_a_checkpoint_error_naming_it(tiny, tmp_path, content):
    path = tmp_path / "bad.pth.tar"
    if content == "truncated":
        save_vqvae(tiny, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad.pth.tar is not a readable PyTorch checkpoint"):
        load_vqvae(path)


def test_wrong_keys_and_shapes_name_the_key(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    missing = dict(sd)
    del missing["decoders.1.out.bias"]
    torch.save({"model": missing}, tmp_path / "m.pth.tar")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\), e.g. \['decoders.1.out.bias'\]"):
        load_vqvae(tmp_path / "m.pth.tar", hparams=tiny.hps)
    torch.save({"model": {**sd, "decoders.1.extra": torch.zeros(1)}}, tmp_path / "u.pth.tar")
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\), e.g. \['decoders.1.extra'\]"):
        load_vqvae(tmp_path / "u.pth.tar", hparams=tiny.hps)
    torch.save({"model": {**sd, "bottleneck.level_blocks.0.k": torch.zeros(3, 4)}}, tmp_path / "s.pth.tar")
    with pytest.raises(CheckpointError, match=r"'bottleneck.level_blocks.0.k' has shape \[3, 4\], the model expects \[256, 32\]"):
        load_vqvae(tmp_path / "s.pth.tar", hparams=tiny.hps)
    # The released architecture against a tiny file: the first differing key is named.
    torch.save({"model": sd}, tmp_path / "t.pth.tar")
    with pytest.raises(CheckpointError, match="does not match the model: 144 missing"):
        load_vqvae(tmp_path / "t.pth.tar", hparams=hparams.get("vqvae"))


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "l.pth.tar")
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' state dict.*found list"):
        load_vqvae(tmp_path / "l.pth.tar")


class Custom:  # a class safe loading must refuse
    pass


def test_unsafe_pickle_needs_consent(tiny, tmp_path):
    path = tmp_path / "p.pth.tar"
    torch.save({"model": tiny.state_dict(), "hps": {"x": Custom()}}, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_vqvae(path, hparams=tiny.hps)
    assert _same_weights(load_vqvae(path, hparams=tiny.hps, trust_pickle=True), tiny)


def test_atomic_save_leaves_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    atomic_save({"v": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # an interrupted run

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_original_hps_with_none_fields_keep_their_meaning(tmp_path):
    hp = hparams.get("tiny_vqvae", hvqvae_multipliers=None, dilation_cycle=2)
    model = make_vqvae(hp)
    _original_file(model, tmp_path / "v.pth.tar")
    loaded = load_vqvae(tmp_path / "v.pth.tar")
    assert loaded.hps.hvqvae_multipliers is None and loaded.hps.dilation_cycle == 2
    assert _same_weights(loaded, model)


def test_flipped_bytes_in_tensor_data_fail_the_checksum(tiny, tmp_path):
    path = save_vqvae(tiny, tmp_path / "vq.pth.tar")
    load_vqvae(path)  # intact: loads
    sd = tiny.state_dict()
    weight = max(sd.values(), key=lambda t: t.numel())  # the biggest tensor: well over 128 bytes
    raw, data = weight.numpy().tobytes(), bytearray(path.read_bytes())
    at = data.find(raw)  # torch.save stores tensor bytes uncompressed
    assert at > 0
    data[at + 64 : at + 128] = bytes(b ^ 0x5A for b in data[at + 64 : at + 128])  # 64 bytes flipped
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"vq.pth.tar is corrupt: its tensors do not match the checksum"):
        load_vqvae(path)


def test_non_finite_weights_in_an_original_file_are_refused(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    sd["decoders.1.out.bias"] = sd["decoders.1.out.bias"].clone().fill_(float("inf"))
    torch.save({"model": sd, "hps": tiny.hps.to_dict()}, tmp_path / "orig.pth.tar")
    with pytest.raises(CheckpointError, match=r"orig.pth.tar is corrupt: 'decoders.1.out.bias' holds 1 NaN/inf"):
        load_vqvae(tmp_path / "orig.pth.tar")


def test_a_prior_where_a_vq_vae_is_expected_and_back(tiny, tmp_path):
    from jukebox_fast import load_prior, make_prior, save_prior

    prior = make_prior("tiny_upsampler", tiny)
    save_prior(prior, tmp_path / "prior_level_1.pth.tar")
    with pytest.raises(CheckpointError, match="prior_level_1.pth.tar holds a prior, not a VQ-VAE"):
        load_vqvae(tmp_path / "prior_level_1.pth.tar")
    save_vqvae(tiny, tmp_path / "vqvae.pth.tar")
    with pytest.raises(CheckpointError, match="vqvae.pth.tar holds a VQ-VAE, not a prior"):
        load_prior(tmp_path / "vqvae.pth.tar")
    # Original files say it by their key names.
    torch.save({"model": prior.state_dict()}, tmp_path / "orig_prior.pth.tar")
    with pytest.raises(CheckpointError, match="orig_prior.pth.tar holds a prior, not a VQ-VAE"):
        load_vqvae(tmp_path / "orig_prior.pth.tar")
    torch.save({"model": tiny.state_dict()}, tmp_path / "orig_vq.pth.tar")
    with pytest.raises(CheckpointError, match="orig_vq.pth.tar holds a VQ-VAE, not a prior"):
        load_prior(tmp_path / "orig_vq.pth.tar", "tiny_upsampler", tiny)
    # the VQ-VAE in the architecture's place: said before the file is read
    with pytest.raises(TypeError, match="must be a preset name or PriorHparams, got VQVAE .the VQ-VAE goes in vqvae="):
        load_prior(tmp_path / "prior_level_1.pth.tar", tiny)


_LOAD_PEAK = """
import json, sys, torch
import torch._dynamo  # (imported on first use of many ops: 150 MB of code, not the load's)
from jukebox_fast import hparams, load_prior, make_prior
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))
path, form = sys.argv[1], sys.argv[2]
hps = hparams.get("tiny_top_prior", prior_width=1024, prior_depth=16)
with torch.device("meta"):  # first-use costs before the baseline
    make_prior(hps, hparams.get("tiny_vqvae"))
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
prior = load_prior(path, hps, hparams.get("tiny_vqvae"), weights=form)
print(json.dumps({"peak": status("VmHWM") - base}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak through Linux's /proc")
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy format (the original files)", "zip format"])
def test_loading_reads_one_tensor_of_the_file_at_a_time(tmp_path, legacy):
    # An fp32 prior of 110 MB loaded as int8 holds the model (int8 matrices, fp32 embeddings: 72 MB)
    # and one file tensor with its conversion, as the memory plan counts it; never the whole file,
    # which reading it before converting held (the file and one converted tensor).
    import json
    import subprocess
    import sys

    from jukebox_fast import make_prior, memory

    hps = hparams.get("tiny_top_prior", prior_width=1024, prior_depth=16)
    path = tmp_path / "prior_level_2.pth.tar"
    torch.save({"hps": {}, "model": make_prior(hps, hparams.get("tiny_vqvae")).state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    size = path.stat().st_size
    assert size > 100e6
    script = tmp_path / "peak.py"
    script.write_text(_LOAD_PEAK)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # as test_memory.py measures: glibc's default
    # dynamic threshold keeps freed blocks in the heap, where they count as resident
    done = subprocess.run([sys.executable, str(script), str(path), "int8"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = json.loads(done.stdout.splitlines()[-1])["peak"]
    plan = memory.plan_sampling(hparams.get("tiny_vqvae"), [None, None, hps], [2], n_samples=1, total_length=128 * 8,
                                choice=memory.Choice(in_turn=True, weights="int8"))
    loading = next(i.nbytes for p in plan.phases for i in p.items if i.name.endswith("(loading)"))
    assert peak < 0.8 * size, (peak, size)
    assert abs(peak - loading) <= max(0.1 * loading, 20 * 2**20), (peak, loading)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy format", "zip format"])
def test_a_prior_read_tensor_by_tensor_is_the_prior_and_bad_files_name_themselves(tmp_path, legacy):
    import copy
    import fractions

    from jukebox_fast import load_prior, make_prior
    from jukebox_fast.models.transformer import Conv1D, weights_in

    vq = hparams.get("tiny_vqvae")
    prior = make_prior("tiny_top_prior", vq)
    sd = prior.state_dict()
    path = tmp_path / "prior_level_2.pth.tar"
    torch.save({"hps": {}, "model": sd}, path, _use_new_zipfile_serialization=not legacy)
    for form in ("stored", "int8"):
        want = weights_in(copy.deepcopy(prior), form)  # kept, or quantised from the same fp32 weights
        got = load_prior(path, "tiny_top_prior", vq, weights=form)
        assert _same_weights(got, want), form
        scales = [(m.w_scale, n) for n, m in got.named_modules() if isinstance(m, Conv1D)]
        assert all((s is None) == (form == "stored") for s, _ in scales)
        if form == "int8":
            assert all(torch.equal(s, want.get_submodule(n).w_scale) for s, n in scales)
    bad = dict(sd)
    key = "prior.transformer._attn_mods.1.mlp.c_fc.w"
    bad[key] = bad[key].clone()
    bad[key][3, 4] = float("nan")
    torch.save({"hps": {}, "model": bad}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=f"{path}.*{key}.*NaN"):
        load_prior(path, "tiny_top_prior", vq, weights="int8")
    torch.save({"hps": {"odd": fractions.Fraction(1, 3)}, "model": sd}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"safe loading refuses \(fractions.Fraction\).*trust_pickle=True"):
        load_prior(path, "tiny_top_prior", vq)
    assert _same_weights(load_prior(path, "tiny_top_prior", vq, trust_pickle=True), prior)
    torch.save({"hps": {}, "model": sd}, path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # the last tensors cut off
    with pytest.raises(CheckpointError, match=str(path)):
        load_prior(path, "tiny_top_prior", vq)
