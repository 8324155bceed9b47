"""Bad input and interruption, as a new user meets them: one table, a case per failure seen.

Each case sets up a folder, runs one command (``jukebox-fast`` argv, in-process or as a
subprocess) or one API call, and names the exit it must end in: 0 with a correct result, or 2
with one line naming the problem (an API call's exception counts as 2 when the command line
would turn it into exit 2). Its ``after`` then checks what must be intact or made. The classes
are those of the issue "Nothing lost, nothing hung".
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile", reason="reading and writing audio files needs soundfile")

from jukebox_fast import hparams, load_prior, load_vqvae, make_prior, make_vqvae, save_prior, save_vqvae  # noqa: E402
from jukebox_fast.cli import USER_ERRORS, main  # noqa: E402
from jukebox_fast.demo import synth_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Kit:
    """Tiny models saved as the commands find them, and a folder of three short songs."""
    models: Path  # vqvae.pth.tar, prior_level_2.pth.tar
    songs: Path

    def embed(self, out: Path, *extra: str, inputs: Path | None = None) -> list[str]:
        return ["embed", str(inputs or self.songs), "--checkpoints", str(self.models), "--out", str(out),
                "--layers", "1", "--quiet", *extra]

    def sample(self, out: Path, *extra: str) -> list[str]:
        return ["sample", "--checkpoints", str(self.models), "--seconds", "0.5", "--out", str(out), "--quiet", *extra]

    def train(self, out: Path, *extra: str, data: Path | None = None) -> list[str]:
        return ["train-vqvae", str(data or self.songs), "--out", str(out), "--steps", "1", "--batch-size", "1",
                "--checkpoint-every", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    root = tmp_path_factory.mktemp("kit")
    torch.manual_seed(0)
    vq = make_vqvae(hparams.get("tiny_vqvae")).eval()
    vq.init_codebooks(0.3 * torch.randn(1, 44032, 1))
    save_vqvae(vq, root / "models" / "vqvae.pth.tar")
    save_prior(make_prior("tiny_top_prior", vq).eval(), root / "models" / "prior_level_2.pth.tar")
    synth_set(root / "songs", 3, 0.4)
    return Kit(root / "models", root / "songs")


# -- the table -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    klass: str  # the class
    bullet: str  # what was seen
    code: int  # the exit it must end in
    message: str  # in the one line (exit 2), or in the output (exit 0)
    make: Callable  # (kit, tmp, monkeypatch) -> Run


@dataclass
class Run:
    action: list[str] | Callable[[], object]  # jukebox-fast's argv, or an API call
    after: Callable[[], None] = lambda: None  # what must be intact or made afterwards
    subprocess: bool = False  # argv run as `python -m jukebox_fast` (the real stderr, the real exit)
    fill: dict = dataclasses.field(default_factory=dict)  # values the case's message names


CASES: dict[str, Case] = {}


def case(klass: str, bullet: str, code: int, message: str):
    def register(make):
        CASES[make.__name__] = Case(klass, bullet, code, message, make)
        return make
    return register


FOLDERS = "1. a folder that says done for files it did not make"
ONE_FILE = "2. one bad file stops a dataset"
SIZES = "3. sizes checked after the memory is spent"
SHAPES = "4. checkpoints whose shapes are not checked"
TRAINING = "5. training that records one thing and does another"
UMASK = "also: outputs with the user's umask"


def npys(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))


def index_of(out: Path, rank: int = 0) -> list[str]:
    return sorted(json.loads(line)["npy"] for line in (out / f"index-{rank}.jsonl").read_text().splitlines())


def ok(argv: list[str]) -> None:
    """A setup step that must succeed."""
    assert main(argv) == 0, argv


def linked(files, folder: Path) -> Path:
    folder.mkdir()
    for f in files:
        os.link(f, folder / f.name)
    return folder


def nothing_made(out: Path) -> Callable[[], None]:
    def after():
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return after


# 1 ------------------------------------------------------------------------------------------------
@case(FOLDERS, "embed --overwrite with other settings over fewer files keeps the old run's features", 0,
      "embedded 1 file(s)")
def embed_overwrite_over_fewer_files(kit, tmp, mp):
    out = tmp / "f"
    ok(kit.embed(out))
    one = linked([kit.songs / "song_01.wav"], tmp / "one")

    def after():
        assert npys(out) == index_of(out) == ["song_01.npy"]  # the earlier run's song_00, song_02 are gone
        assert json.loads((out / "settings.json").read_text())["layers"] == [2]
        assert np.load(out / "song_01.npy").shape[0] == 1
    return Run(kit.embed(out, "--overwrite", "--layers", "2", inputs=one), after)


@case(FOLDERS, "a truncated or junk .npy counts as done on the rerun", 0, "embedded 2 file(s) into")
def embed_redoes_truncated_and_junk_files(kit, tmp, mp):
    out = tmp / "f"
    ok(kit.embed(out))
    whole = {name: np.load(out / name) for name in npys(out)}
    data = (out / "song_00.npy").read_bytes()
    (out / "song_00.npy").write_bytes(data[: len(data) // 2])
    (out / "song_02.npy").write_bytes(b"\x93NUMPY junk")

    def after():
        for name, array in whole.items():
            np.testing.assert_array_equal(np.load(out / name), array)
        assert index_of(out) == sorted(whole)
    return Run(kit.embed(out), after)


@case(FOLDERS, "a run killed between a file and its index line leaves the file unlisted, even after a rerun", 0,
      "(3 done before, 0 unreadable)")
def embed_lists_a_file_its_killed_run_did_not(kit, tmp, mp):
    out = tmp / "f"
    ok(kit.embed(out))
    lines = (out / "index-0.jsonl").read_text().splitlines()
    (out / "index-0.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last line never written

    def after():
        assert index_of(out) == npys(out) and len(npys(out)) == 3
    return Run(kit.embed(out), after)


@case(FOLDERS, "a rank other than 0 writes no settings: once rank 0 died, other settings took its files", 2,
      "holds features made with other settings (layers: [1] -> [2];")
def embed_every_rank_records_its_settings(kit, tmp, mp):
    out = tmp / "f"
    mp.setenv("RANK", "1")
    mp.setenv("WORLD_SIZE", "2")
    ok(kit.embed(out))  # rank 1 alone: rank 0 died before it wrote anything
    made = {name: (out / name).read_bytes() for name in npys(out)}

    def after():
        assert made and {name: (out / name).read_bytes() for name in npys(out)} == made
    return Run(kit.embed(out, "--layers", "2"), after)


@case(FOLDERS, "sample --overwrite with fewer samples leaves the old run's wavs beside the new ones", 0,
      "wrote 1 sample(s)")
def sample_overwrite_with_fewer_samples(kit, tmp, mp):
    out = tmp / "s"
    ok(kit.sample(out, "--n-samples", "2"))

    def after():
        assert sorted(p.name for p in out.glob("*.wav")) == ["level_2_item_0.wav"]
        assert torch.load(out / "codes.pt", weights_only=False)["zs"][2].shape[0] == 1
    return Run(kit.sample(out, "--overwrite", "--n-samples", "1"), after)


HOLD = ("import sys\nfrom jukebox_fast.runs import hold_output\nwith hold_output(sys.argv[1]):\n"
        "    print('held', flush=True)\n    sys.stdin.read()\n")


def while_another_process_holds(out: Path, argv: list[str], made: Callable[[], bool]) -> Run:
    """Run ``argv`` while another process holds ``out``; once that process ends, the same
    command goes through and ``made()``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"

    def after():
        holder.communicate("", timeout=60)  # the holder ends, and its lock with it
        assert main(argv) == 0 and made()
    return Run(argv, after, fill={"pid": holder.pid})


@case(FOLDERS, "nothing stops two runs from writing into one folder at once (embed)", 2,
      "f is being written by another run (process {pid}: ")
def embed_into_a_folder_another_run_holds(kit, tmp, mp):
    out = tmp / "f"
    return while_another_process_holds(out, kit.embed(out), lambda: len(npys(out)) == 3)


@case(FOLDERS, "nothing stops two runs from writing into one folder at once (sample)", 2,
      "s is being written by another run (process {pid}: ")
def sample_into_a_folder_another_run_holds(kit, tmp, mp):
    out = tmp / "s"
    return while_another_process_holds(out, kit.sample(out), (out / "level_2_item_0.wav").exists)


# 2 ------------------------------------------------------------------------------------------------
def one_hertz_wav(path: Path) -> Path:
    """A wav whose header claims 1 Hz: two hours of 'audio' in 7200 frames."""
    soundfile.write(path, np.zeros(7200, np.float32), 1, subtype="PCM_16")
    return path


@case(ONE_FILE, "a wav whose header claims 1 Hz stops embed with a MemoryError; the good files are never embedded",
      0, "embedded 3 file(s) into")
def embed_skips_an_absurd_header(kit, tmp, mp):
    songs = linked(sorted(kit.songs.iterdir()), tmp / "songs")
    one_hertz_wav(songs / "song_000_one_hertz.wav")  # sorts first: the good files come after it
    out = tmp / "f"

    def after():
        assert npys(out) == ["song_00.npy", "song_01.npy", "song_02.npy"]
        assert "over the 3600 s one file may give" in (out / "failed-0.log").read_text()
    return Run(kit.embed(out, inputs=songs), after)


@case(ONE_FILE, "training stops on a dangling symlink (and on an empty file, an absurd header)", 0,
      "skipped 3 file(s)")
def training_skips_what_it_cannot_read(kit, tmp, mp):
    data = linked([kit.songs / "song_00.wav"], tmp / "data")
    (data / "gone.wav").symlink_to(tmp / "nowhere.wav")
    (data / "empty.wav").write_bytes(b"")
    one_hertz_wav(data / "one_hertz.wav")
    out = tmp / "r"

    def after():
        assert load_vqvae(out / "vqvae.pth.tar").hps == hparams.get("tiny_vqvae")
    return Run(kit.train(out, data=data), after)


# 3 ------------------------------------------------------------------------------------------------
@case(SIZES, "sample --seconds 1e9 runs for minutes with growing memory", 2,
      "1 sample(s) of 1e+09 s does not fit in")
def sample_seconds_far_past_memory(kit, tmp, mp):
    out = tmp / "s"
    return Run(kit.sample(out, "--seconds", "1e9"), nothing_made(out), subprocess=True)


@case(SIZES, "sample --n-samples 100000000 runs for minutes with growing memory", 2,
      "100000000 sample(s) of 0.4992 s does not fit in")
def sample_samples_far_past_memory(kit, tmp, mp):
    out = tmp / "s"  # with a prime, whose codes are not copied 10^8 times before the check
    prime = str(kit.songs / "song_00.wav")
    return Run(kit.sample(out, "--n-samples", "100000000", "--prime", prime, "--prime-seconds", "0.1"),
               nothing_made(out))


@case(SIZES, "a batch past memory (train-vqvae --batch-size 100000000) grows until killed", 2,
      "a batch of 100000000 windows of")
def training_batch_far_past_memory(kit, tmp, mp):
    out = tmp / "r"
    return Run(kit.train(out, "--batch-size", "100000000"), nothing_made(out))


@case(SIZES, "a prime longer than the request exits 0 after sampling 0 tokens", 2,
      "the prime holds 0.40 s at level 2, as long as the 0.30 s asked for or longer, so nothing would be sampled")
def sample_prime_as_long_as_the_request(kit, tmp, mp):
    out = tmp / "s"
    return Run(kit.sample(out, "--seconds", "0.3", "--prime", str(kit.songs / "song_00.wav"), "--prime-seconds", "0.4"),
               nothing_made(out))


# 4 ------------------------------------------------------------------------------------------------
@case(SHAPES, "load_prior accepts hyper-parameters that contradict the file's (other heads and blocks)", 2,
      "heads: 4 given, 2 recorded; blocks: 4 given, 8 recorded")
def load_prior_with_other_heads_and_blocks(kit, tmp, mp):
    path = kit.models / "prior_level_2.pth.tar"
    other = dataclasses.replace(hparams.get("tiny_top_prior"), heads=4, blocks=4)
    return Run(lambda: load_prior(path, other))


@case(SHAPES, "sample with a VQ-VAE whose hops differ from the priors' runs to the end and makes noise", 2,
      "downs_t: (2, 2, 1) given, (3, 2, 2) recorded")
def sample_with_a_vqvae_of_other_hops(kit, tmp, mp):
    save_vqvae(make_vqvae(dataclasses.replace(hparams.get("tiny_vqvae"), downs_t=(2, 2, 1))),
               tmp / "other" / "vqvae.pth.tar")
    out = tmp / "s"
    return Run(kit.sample(out, "--vqvae", str(tmp / "other" / "vqvae.pth.tar")), nothing_made(out))


@case(SHAPES, "generate (the API) with a VQ-VAE of other hops, where no file records them", 2,
      "this VQ-VAE's level 2 has a hop of 32 and 256 codes: they were not trained together")
def generate_with_a_vqvae_of_other_hops(kit, tmp, mp):
    from jukebox_fast.sample import Song, generate

    other = make_vqvae(dataclasses.replace(hparams.get("tiny_vqvae"), downs_t=(2, 2, 1))).eval()
    prior = load_prior(kit.models / "prior_level_2.pth.tar")  # made for tiny_vqvae's hop of 128
    return Run(lambda: generate(other, [None, None, prior], Song(0, 0, 0), seconds=0.5, levels=[2]))


@case(SHAPES, "a hyper-parameter of zero gives a ZeroDivisionError (a prior's)", 2, "heads must be >= 1, got 0")
def prior_hparams_with_zero_heads(kit, tmp, mp):
    return Run(lambda: dataclasses.replace(hparams.get("tiny_top_prior"), heads=0))


@case(SHAPES, "a hyper-parameter of zero (a VQ-VAE's)", 2, "width must be >= 1, got 0")
def vqvae_hparams_with_zero_width(kit, tmp, mp):
    return Run(lambda: dataclasses.replace(hparams.get("tiny_vqvae"), width=0))


@case(SHAPES, "sparse_attention fails inside the kernel at width 0", 2, "the head width d must be >= 1")
def sparse_attention_at_width_zero(kit, tmp, mp):
    from jukebox_fast.ops import AttentionPattern, sparse_attention

    q = torch.zeros(1, 2, 8, 0)
    return Run(lambda: sparse_attention(q, q, q, AttentionPattern(0)))


@case(SHAPES, "sparse_attention fails inside the kernel at length 0", 0, "")
def sparse_attention_at_length_zero(kit, tmp, mp):
    from jukebox_fast.ops import AttentionPattern, sparse_attention

    q = torch.randn(2, 3, 0, 5)
    found = []

    def after():
        assert found[0].shape == (2, 3, 0, 5)
    return Run(lambda: found.append(sparse_attention(q, q, q, AttentionPattern(0))), after)


# 5 ------------------------------------------------------------------------------------------------
@case(TRAINING, "--resume --lr 0.01 trains at the old rate but writes 0.01 into the checkpoint's config", 2,
      "holds a run trained with other settings (lr: 0.0003 -> 0.01)")
def resume_with_another_learning_rate(kit, tmp, mp):
    out = tmp / "r"
    ok(kit.train(out))
    before = (out / "checkpoint.pt").read_bytes()

    def after():
        assert (out / "checkpoint.pt").read_bytes() == before
    return Run(kit.train(out, "--resume", "--steps", "2", "--lr", "0.01"), after)


@case(TRAINING, "--lr 1e30 ends in a traceback", 2, "stopped: the loss is nan at step 2;")
def learning_rate_that_diverges(kit, tmp, mp):
    out = tmp / "r"

    def after():
        saved = torch.load(out / "checkpoint.pt", weights_only=False)
        assert saved["step"] == 1
        assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    return Run(kit.train(out, "--lr", "1e30", "--steps", "3"), after, subprocess=True)


@case(TRAINING, "a loss that turns non-finite stops the run naming the step, keeping the last good checkpoint", 2,
      "the loss is nan at step 3; {out}/checkpoint.pt keeps the last state with finite weights (after step 2)")
def loss_that_turns_nan_keeps_the_checkpoint(kit, tmp, mp):
    from jukebox_fast.train import TrainConfig
    from jukebox_fast.train.loop import fit

    calls = []

    def loss_fn(m, x):
        calls.append(1)
        loss = m(x).square().mean()
        return (loss * float("nan") if len(calls) == 3 else loss), {}

    out = tmp / "r"
    cfg = TrainConfig(steps=5, batch_size=2, checkpoint_every=2)

    def after():
        assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    return Run(lambda: fit(torch.nn.Linear(3, 1), loss_fn, lambda g: torch.randn(2, 3, generator=g), cfg, out,
                           progress=False), after, fill={"out": out})


@case(UMASK, "outputs are written 0600, as a temporary file is", 0, "embedded 3 file(s)")
def outputs_follow_the_umask(kit, tmp, mp):
    out = tmp / "f"
    os.umask(0o027)  # the runner puts the test's umask back

    def after():
        made = [out / "settings.json", out / "index-0.jsonl", out / "failed-0.log", *out.glob("*.npy")]
        assert len(made) == 6 and {oct(p.stat().st_mode & 0o777) for p in made} == {oct(0o640)}
    return Run(kit.embed(out), after)


# -- the runner ------------------------------------------------------------------------------------
def outcome(run: Run, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the case's command or call."""
    if callable(run.action):  # the API: what the command line would turn into exit 2 counts as 2
        try:
            run.action()
        except USER_ERRORS as e:
            return 2, "", f"{type(e).__name__}: {e}\n"
        return 0, "", ""
    if run.subprocess:
        done = subprocess.run([sys.executable, "-m", "jukebox_fast", *run.action], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        return done.returncode, done.stdout, done.stderr
    code = main(run.action)
    return (code, *capsys.readouterr())


@pytest.mark.filterwarnings("ignore:skipping")  # the cases that skip files say so in their output
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, kit, tmp_path, monkeypatch, capsys):
    c = CASES[name]
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        run = c.make(kit, tmp_path, monkeypatch)
        capsys.readouterr()
        code, out, err = outcome(run, capsys)
    finally:
        os.umask(umask)
    assert code == c.code, (c.bullet, out, err)
    message = c.message.format(**run.fill)
    if code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
        assert message in err, err
    else:
        assert message in out, out
    run.after()
