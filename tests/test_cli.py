"""The jukebox-fast command: every subcommand on tiny presets, the demo at its CI size, and the
one-line errors for bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
soundfile = pytest.importorskip("soundfile", reason="reading and writing audio files needs soundfile")
import torch

from jukebox_fast.audio import write_wav
from jukebox_fast.cli import main
from jukebox_fast.demo import synth_set


def test_info_lists_ops_and_implementations(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in ("vq_nearest", "sparse_attention", "decode_attention", "decode_layers", "dilated_resblock", "step_logits"):
        assert op in out
    assert "available" in out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's main job at its CI size (--small)."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--small", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_writes_listenable_audio_pictures_and_a_report(demo):
    report = json.loads((demo / "report.json").read_text())
    assert set(report["seconds"]) == {"data", "vqvae", "priors", "sample", "cached_vs_recompute", "measures"}
    trained = {"vqvae level 1", "vqvae level 2", "top_prior", "upsampler"}
    assert set(report["training_seconds"]) == set(report["losses"]) == trained
    measured = report["musicality"]
    assert {"training clip", "training clips (all)", "reconstruction (level 1)", "reconstruction (level 2)",
            "sample 0 (level 1)", "sample 0 (level 2)", "upsampler on the true level-2 codes",
            "white noise"} <= set(measured)
    assert "reconstruction (level 0)" not in measured  # the demo trains levels 1 and 2 only
    assert measured["training clip"]["pitched"] > 0.9 and measured["white noise"]["pitched"] == 0.0
    assert "| white noise | 0.0% |" in (demo / "report.md").read_text()
    wavs = sorted((demo / "samples").glob("level_[12]_item_*.wav")) + [demo / "reconstruction.wav"]
    assert len(wavs) == 3  # the sample (level 1), its top level alone (level 2), the reconstruction
    for path in wavs:
        audio, sr = soundfile.read(path)
        assert sr == 44100 and audio.ndim == 1 and len(audio) > 40000, path
        assert 0 < abs(audio).max() <= 1.0 and audio.std() > 1e-4, path  # not silence
    assert (demo / "spectrogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["cached_tokens_per_s"] > 0 and report["recompute_tokens_per_s"] > 0
    assert "tokens/s" in (demo / "report.md").read_text()


def test_demo_quality_preset_takes_overrides_and_excludes_small(tmp_path, monkeypatch, capsys):
    import dataclasses

    import jukebox_fast.demo as demo_module
    from jukebox_fast.demo import DemoConfig

    seen = []

    def run(out, cfg, **kwargs):  # the preset's run takes a quarter of an hour: only its config here
        seen.append(cfg)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text("# report\n")
        return {"seconds": {"all": 1.0}}

    monkeypatch.setattr(demo_module, "run", run)
    assert main(["demo", "--quality", "--top-prior-steps", "7000", "--top-p", "0.5", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert seen == [dataclasses.replace(DemoConfig.quality(), top_prior_steps=7000, top_p=0.5)]
    default, quality = DemoConfig(), DemoConfig.quality()
    assert all(getattr(quality, f"{stage}_steps") > getattr(default, f"{stage}_steps")
               for stage in ("vqvae", "top_prior", "upsampler"))
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["demo", "--quality", "--small", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_demo_samples_every_level_at_its_temperature_from_its_nucleus():
    from jukebox_fast.demo import DemoConfig

    cfg = DemoConfig(temperature=0.7, upsampler_temperature=0.3, top_p=0.6, seed=4)
    s = cfg.sampling()
    assert s.temp == (0.3, 0.3, 0.7) and s.top_p == 0.6 and not s.progress
    draws = [torch.randint(0, 1 << 30, (4,), generator=cfg.sampling().generator) for _ in range(2)]
    assert torch.equal(*draws)  # each call starts the seed's stream over: the samples and the
    # upsampler on true codes draw alike in every run


def test_trainings_side_by_side_are_those_in_turn(demo, tmp_path):
    # The demo trains two models at once in two spawned processes when it has two threads or more
    # (CI's workers have one, so the fixture's run took them in turn): the same models, bit for
    # bit, as one-thread training in this process. The VQ-VAE's levels here, trained apart.
    from jukebox_fast.demo import DemoConfig, train_side_by_side
    from jukebox_fast.train import TrainConfig, train_vqvae

    def jobs(root: Path) -> list[dict]:
        return [dict(data=str(demo / "data"), out_dir=str(root / f"level_{level}"), preset=DemoConfig.small().vqvae(),
                     cfg=TrainConfig(steps=2, batch_size=1, checkpoint_every=2), device="cpu", progress=False,
                     start_level=level, end_level=level + 1)
                for level in (1, 2)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_turn = train_side_by_side(train_vqvae, jobs(tmp_path / "turn"), None)
    finally:
        torch.set_num_threads(threads)
    side = train_side_by_side(train_vqvae, jobs(tmp_path / "side"), 1)
    assert [s["losses"] for s in side] == [s["losses"] for s in in_turn]
    for level in (1, 2):
        a, b = (torch.load(tmp_path / run / f"level_{level}" / "vqvae.pth.tar", weights_only=False)
                for run in ("turn", "side"))
        assert [e["init"] for e in a["ema"]] == [i == level for i in range(3)]
        assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k])
                                                              for k in a["model"]), level
        assert all(torch.equal(x["k_sum"], y["k_sum"]) for x, y in zip(a["ema"], b["ema"]) if x["init"])
    # The demo's joined VQ-VAE: levels 1 and 2, each as its own training left it
    from jukebox_fast.checkpoint import load_vqvae

    joined = load_vqvae(demo / "vqvae" / "vqvae.pth.tar")
    for level in (1, 2):
        part = load_vqvae(demo / "vqvae" / f"level_{level}" / "vqvae.pth.tar")
        assert torch.equal(joined.bottleneck.level_blocks[level].k, part.bottleneck.level_blocks[level].k)
        pairs = zip(joined.encoders[level].parameters(), part.encoders[level].parameters())
        assert all(torch.equal(a, b) for a, b in pairs)


def test_side_by_side_from_a_script_without_a_main_guard_says_how_to_fix_it(tmp_path):
    # Spawned processes import the script that started them again; unguarded, each child would
    # start trainings of its own while it bootstraps, which multiprocessing refuses.
    script = tmp_path / "unguarded.py"
    script.write_text("from jukebox_fast.demo import train_side_by_side\n\n"
                      "def train(**job):\n    return None, {'losses': [0.0]}\n\n"
                      "print(train_side_by_side(train, [{}, {}], 1))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert done.returncode != 0 and 'if __name__ == "__main__":' in done.stderr, done.stderr[-2000:]
    guarded = tmp_path / "guarded.py"
    guarded.write_text(script.read_text().replace("print(", "if __name__ == '__main__':\n    print("))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0 and "'losses': [0.0]" in done.stdout, done.stderr[-2000:]


def test_bench_demo_tabulates_the_demo(demo, tmp_path):
    # benchmarks/bench_demo.py runs the demo per seed, then this table (test_benchmarks.py leaves
    # the script to this test, which has a demo run already).
    from bench_output import check_bench_output

    out = tmp_path / "bench_demo.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--reports", str(demo), "--out", str(out)],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    check_bench_output(out, "bench_demo")
    assert "| level 1: fewest notes |" in out.read_text()


def test_bench_demo_sampling_draws_the_demo_models_again_as_the_demo_does(demo, tmp_path):
    from bench_output import check_bench_output

    report = json.loads((demo / "report.json").read_text())
    cfg = report["config"]
    out = tmp_path / "bench_demo_sampling.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo_sampling.py"
    setting = f"{cfg['temperature']},{cfg['upsampler_temperature']},{cfg['top_p']}"
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the fixture's (1 under xdist)
    done = subprocess.run([sys.executable, str(script), "--smoke", "--runs", str(demo), "--settings", setting,
                           "--first-seed", str(cfg["seed"]), "--out", str(out)], capture_output=True, text=True,
                          timeout=100, env=threads)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    check_bench_output(out, "bench_demo_sampling")
    (samples,) = json.loads(out.with_suffix(".json").read_text())["samples"].values()
    # The demo's own setting and seed draw the demo's own samples again. The same codes; their
    # decoding may differ in the last bits when another process loads the cores (a CI run once
    # read a flatness 1e-4 apart, every other measure equal).
    for level in (1, 2):
        assert [s[f"level {level}"] for s in samples] == [
            pytest.approx(report["musicality"][f"sample {i} (level {level})"], rel=1e-3)
            for i in range(cfg["n_samples"])]


def test_encode_then_decode(demo, tmp_path, capsys):
    vqvae = str(demo / "vqvae" / "vqvae.pth.tar")
    song = demo / "data" / "song_00.wav"
    codes = tmp_path / "codes.pt"
    assert main(["encode", str(song), "--vqvae", vqvae, "--out", str(codes)]) == 0
    saved = torch.load(codes)
    # The demo trains levels 1 and 2 only: level 0 has no codes
    assert [z.shape[1] for z in saved["codes"]] == [0, 88192 // 32, 88192 // 128]
    assert main(["decode", str(codes), "--vqvae", vqvae, "--out", str(tmp_path / "dec"), "--level", "0"]) == 2
    assert "no codes at level 0" in capsys.readouterr().err
    assert main(["decode", str(codes), "--vqvae", vqvae, "--out", str(tmp_path / "dec"), "--level", "1"]) == 0
    audio, sr = soundfile.read(tmp_path / "dec" / "level_1_item_0.wav")
    assert len(audio) == 88192 and sr == 44100
    assert (tmp_path / "dec" / "level_1.png").exists()


def test_sample_straight_from_the_demo_folder_and_resume(demo, tmp_path, capsys):
    # The demo's layout (vqvae/, top_prior/, upsampler/) as it is; the levels come from the priors found.
    args = ["sample", "--checkpoints", str(demo), "--seconds", "0.5", "--n-samples", "2",
            "--out", str(tmp_path / "s"), "--quiet", "--prime", str(demo / "data" / "song_01.wav"),
            "--prime-seconds", "0.2"]
    assert main(args) == 0
    saved = torch.load(tmp_path / "s" / "codes.pt")
    first = saved["zs"]
    assert [z.shape for z in first[1:]] == [(2, 22016 // 32), (2, 22016 // 128)] and saved["settings"]["levels"] == [2, 1]
    assert main(args) == 0  # everything is sampled already: resumes, changes nothing
    assert all(torch.equal(a, b) for a, b in zip(first, torch.load(tmp_path / "s" / "codes.pt")["zs"]))
    for i in range(2):
        assert soundfile.read(tmp_path / "s" / f"level_1_item_{i}.wav")[0].shape == (22016,)


@pytest.fixture(scope="module")
def sampled(demo, tmp_path_factory):
    """A folder of codes sampled from the demo's models at the default settings (copied per test)."""
    out = tmp_path_factory.mktemp("sampled") / "s"
    assert main(["sample", "--checkpoints", str(demo), "--seconds", "0.5", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("change, named", [
    (["--seed", "5"], "the seed differs"), (["--temperature", "0.5"], "temperature: 0.99 -> 0.5"),
    (["--top-k", "3"], "top_k: 0 -> 3"), (["--top-p", "0.9"], "top_p: 0.0 -> 0.9"),
    (["--levels", "2"], "levels: [2, 1] -> [2]"), (["--seconds", "0.4"], "total_length: 22016 -> 17536"),
])
def test_other_settings_never_return_the_old_codes(demo, sampled, tmp_path, capsys, change, named):
    shutil.copytree(sampled, tmp_path / "s")
    base = ["sample", "--checkpoints", str(demo), "--seconds", "0.5", "--out", str(tmp_path / "s"), "--quiet"]
    saved = torch.load(tmp_path / "s" / "codes.pt")
    old = saved["zs"]
    capsys.readouterr()
    assert main(base + change) == 2
    err = capsys.readouterr().err
    assert "holds codes sampled with other settings" in err and named in err and "--overwrite" in err, err
    assert all(torch.equal(a, b) for a, b in zip(old, torch.load(tmp_path / "s" / "codes.pt")["zs"]))
    assert main(base + change + ["--overwrite"]) == 0
    new = torch.load(tmp_path / "s" / "codes.pt")  # sampled anew, with the new settings recorded
    assert new["settings"] != saved["settings"] and main(base + change) == 0  # which now resume


def test_ctrl_c_while_sampling_says_where_the_codes_are_and_exits_130(demo, tmp_path, capsys, monkeypatch):
    import jukebox_fast.sample as sample_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_mod, "generate", interrupted)
    out = tmp_path / "s"
    assert main(["sample", "--checkpoints", str(demo), "--seconds", "0.5", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"interrupted; the codes sampled so far are in {out / 'codes.pt'}" in err
    assert "run the same command to resume" in err


def test_rerunning_the_demo_into_its_folder_is_refused(demo, capsys):
    before = (demo / "vqvae" / "vqvae.pth.tar").stat().st_mtime_ns
    assert main(["demo", "--small", "--out", str(demo), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{demo} already holds a demo run" in err and "--resume" in err and "--overwrite" in err
    assert (demo / "vqvae" / "vqvae.pth.tar").stat().st_mtime_ns == before


def test_train_subcommands_resume(tmp_path, capsys):
    synth_set(tmp_path / "songs", 2, 2.0)
    common = ["--steps", "2", "--batch-size", "1", "--checkpoint-every", "1", "--quiet", "--device", "cpu"]
    assert main(["train-vqvae", str(tmp_path / "songs"), "--out", str(tmp_path / "vq"), *common]) == 0
    vq = str(tmp_path / "vq" / "vqvae.pth.tar")
    assert main(["train-prior", str(tmp_path / "songs"), "--vqvae", vq, "--out", str(tmp_path / "up"),
                 "--preset", "tiny_upsampler", *common]) == 0
    more = [a if a != "2" else "3" for a in common]
    assert main(["train-prior", str(tmp_path / "songs"), "--vqvae", vq, "--out", str(tmp_path / "up"),
                 "--preset", "tiny_upsampler", "--resume", *more]) == 0
    assert torch.load(tmp_path / "up" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert "prior_level_1.pth.tar" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["encode", "{tmp}/missing.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "audio file not found"),
    (["encode", "{tmp}/bad.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "cannot read audio from"),
    (["encode", "{tmp}/empty.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "holds no audio samples"),
    (["decode", "{tmp}/bad.wav", "--vqvae", "{vq}", "--out", "{tmp}/o"], "bad.wav"),
    (["encode", "{tmp}/empty.wav", "--vqvae", "{tmp}/nope.pth.tar", "--out", "{tmp}/c.pt"], "nope.pth.tar"),
    (["train-vqvae", "{tmp}/no_songs", "--out", "{tmp}/r", "--quiet"], "training data folder not found"),
    (["sample", "--checkpoints", "{tmp}", "--vqvae", "{vq}", "--out", "{tmp}/s"], "no prior_level_<L>.pth.tar under"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, demo, tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not audio")
    write_wav(tmp_path / "empty.wav", torch.zeros(0).numpy())
    vq = str(demo / "vqvae" / "vqvae.pth.tar")
    argv = [a.format(tmp=tmp_path, vq=vq) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jukebox-fast {argv[0]}: error:") and err.count("\n") == 1, err
    assert message in err


SAMPLE = ["sample", "--checkpoints", "{demo}", "--seconds", "0.5", "--out", "{tmp}/s", "--quiet"]
IDS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ids"


@pytest.mark.parametrize("argv, message", [
    (SAMPLE + ["--levels", "1"], "level 1 is conditioned on level 2's codes"),
    (SAMPLE + ["--levels", "2,7"], "this VQ-VAE has levels 0..2, got 7"),
    (SAMPLE + ["--levels", "one"], "--levels takes levels separated by commas"),
    (SAMPLE + ["--seconds", "inf"], "--seconds must be a finite number > 0, got inf"),
    (SAMPLE + ["--seconds", "0"], "--seconds must be a finite number > 0, got 0.0"),
    (SAMPLE + ["--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
    (SAMPLE + ["--top-p", "5"], "--top-p must lie in [0, 1] (0: off), got 5.0"),
    (SAMPLE + ["--top-k", "-4"], "--top-k must be >= 0 (0: off), got -4"),
    (SAMPLE + ["--n-samples", "0"], "--n-samples must be >= 1, got 0"),
    (SAMPLE + ["--genre", "-5"], "--genre ids are >= 0, got -5"),
    (SAMPLE + ["--artist", "-2"], "--artist ids are >= 0, got -2"),
    (SAMPLE + ["--prime", "{demo}/data/song_00.wav", "--prime-seconds", "-1"],
     "--prime-seconds must be a finite number > 0, got -1.0"),
    (SAMPLE + ["--prime", "{tmp}/nan.wav"], "nan.wav holds 1 non-finite (NaN or inf) sample(s)"),
    (SAMPLE + ["--level-ids", "1:2"], "--level-ids takes LEVEL:ARTIST:GENRE[,GENRE...] ids, got '1:2'"),
    (SAMPLE + ["--vqvae", "{demo}/top_prior/prior_level_2.pth.tar"], "prior_level_2.pth.tar holds a prior, not a VQ-VAE"),
    (["encode", "{tmp}/nan.wav", "--vqvae", "{demo}/vqvae/vqvae.pth.tar", "--out", "{tmp}/c.pt"],
     "nan.wav holds 1 non-finite (NaN or inf) sample(s), the first at 0.010 s (sample 441)"),
    (["encode", "{demo}/data/song_00.wav", "--vqvae", "{demo}/upsampler/prior_level_1.pth.tar", "--out", "{tmp}/c.pt"],
     "prior_level_1.pth.tar holds a prior, not a VQ-VAE"),
    (["decode", "{tmp}/uint8.pt", "--vqvae", "{demo}/vqvae/vqvae.pth.tar", "--out", "{tmp}/o"],
     "codes of level 0 must be int64 or int32 code indices, got torch.uint8"),
    (["decode", "{tmp}/empty.pt", "--vqvae", "{demo}/vqvae/vqvae.pth.tar", "--out", "{tmp}/o"],
     "empty.pt has no codes at level 0"),
    (["train-vqvae", "{demo}/data", "--out", "{tmp}/r", "--preset", "tiny_top_prior", "--quiet"],
     "preset 'tiny_top_prior' is a prior, not a VQ-VAE (VQ-VAE presets: tiny_vqvae, vqvae)"),
    (["train-prior", "{demo}/data", "--vqvae", "{demo}/vqvae/vqvae.pth.tar", "--out", "{tmp}/r", "--preset",
      "tiny_vqvae", "--quiet"], "preset 'tiny_vqvae' is not a prior"),
    (["train-vqvae", "{demo}/data", "--out", "{demo}/vqvae", "--quiet"], "vqvae already holds a run"),
    (["train-vqvae", "{tmp}/nan_songs", "--out", "{tmp}/r", "--bad-files", "stop", "--quiet"],
     "nan.wav holds 1 non-finite"),
])
def test_each_bad_input_is_one_line_naming_it_and_exit_2(argv, message, demo, tmp_path, capsys):
    audio = synth_set(tmp_path, 1, 0.5)[0]
    clip = soundfile.read(audio, dtype="float32")[0]
    clip[441] = float("nan")
    soundfile.write(tmp_path / "nan.wav", clip, 44100, subtype="FLOAT")
    (tmp_path / "nan_songs").mkdir()
    shutil.copy(tmp_path / "nan.wav", tmp_path / "nan_songs")
    torch.save({"codes": [torch.zeros(1, 64, dtype=torch.uint8)] * 3}, tmp_path / "uint8.pt")
    torch.save({"codes": [torch.zeros(1, 0, dtype=torch.int64)] * 3}, tmp_path / "empty.pt")
    argv = [a.format(tmp=tmp_path, demo=demo) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jukebox-fast {argv[0]}: error:") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(demo, tmp_path, capsys):
    assert main([a.format(demo=demo, tmp=tmp_path) for a in SAMPLE] + ["--device", "cuda"]) == 2
    assert "--device cuda: this PyTorch sees no CUDA device (use --device cpu)" in capsys.readouterr().err
    assert main(["train-vqvae", str(demo / "data"), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "this PyTorch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not IDS.is_dir(), reason="the released ids files are not in the workspace")
def test_a_misspelt_artist_is_an_error_naming_the_closest(demo, tmp_path, capsys):
    argv = [a.format(demo=demo, tmp=tmp_path) for a in SAMPLE] + ["--ids", str(IDS), "--artist", "Ella Fitzgerlad"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "artist 'Ella Fitzgerlad' is not in" in err and "closest: 'ella_fitzgerald'" in err and err.count("\n") == 1


def test_bad_arguments_exit_non_zero_with_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--vqvae-steps", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_bench_runs_a_script_and_rejects_unknown_names(tmp_path, capsys):
    assert main(["bench", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main(["bench", "decoder", "--out", str(tmp_path), "--", "--smoke"]) == 0
    table = (tmp_path / "decoder.md").read_text()
    assert "| vqvae decode, fp32 |" in table and "speed-up" in table


def test_bench_writes_into_a_relative_out_folder_and_runs_on_past_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # vq rejects --seconds and fails; decoder still runs, and its table lands under ./results here.
    code = main(["bench", "vq", "decoder", "--out", "results", "--", "--smoke", "--seconds", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "benchmark(s) failed: vq" in err
    assert (tmp_path / "results" / "decoder.md").exists() and (tmp_path / "results" / "decoder.json").exists()
    assert not (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decoder.md").exists()  # the old bug


def test_module_entry_points_run():
    for cmd in ([sys.executable, "-m", "jukebox_fast.info"], [sys.executable, "-m", "jukebox_fast", "info"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "vq_nearest" in out
    exe = shutil.which("jukebox-fast")
    if exe:  # the console script exists once the package is installed
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
        for command in ("demo", "info", "sample", "train-vqvae", "train-prior", "encode", "decode", "bench"):
            assert command in out
