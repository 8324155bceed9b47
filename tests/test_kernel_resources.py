"""Every Triton kernel configuration the dispatch can choose at the released shapes fits an H200
block: compiled for sm_90 as a launch compiles it (``jukebox_fast.kernel_resources``), with the
Triton installed here and with Triton 3.6.0, the version on the GPU machines' image. No GPU is
needed; the check takes a few minutes on two cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the resource check compiles Triton kernels")
from jukebox_fast import kernel_resources  # noqa: E402

GPU_IMAGE_TRITON = "3.6.0"  # the device tool's KINDS.md: the H200 image's Triton


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The check's reports, one per Triton version, from one run of the module's command line."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the resource check compiles for the GPU; it runs without TRITON_INTERPRET")
    out = tmp_path_factory.mktemp("resources") / "reports.json"
    cmd = [sys.executable, "-m", "jukebox_fast.kernel_resources", "--json", str(out),
           "--also-triton", GPU_IMAGE_TRITON]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert out.exists(), f"the check did not finish (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())["reports"]


def test_both_triton_versions_were_checked(reports):
    import triton

    assert [r["versions"]["triton"] for r in reports] == [triton.__version__, GPU_IMAGE_TRITON]


def test_every_configuration_was_compiled(reports):
    expected = {(c.op, c.config) for c in kernel_resources.cases()}
    for rep in reports:
        assert {(r["op"], r["config"]) for r in rep["rows"]} == expected, rep["versions"]["triton"]
        assert all(r["kernel"] != "?" for r in rep["rows"]), [r for r in rep["rows"] if r["kernel"] == "?"][:3]


def test_nothing_is_over_a_limit(reports):
    # Every version's rows first, so a failure shows them all (one version's must not hide another's).
    bad = [f"Triton {rep['versions']['triton']}: {r['op']} | {r['config']} | {r['kernel']}: {'; '.join(r['problems'])}"
           for rep in reports for r in rep["rows"] if r["problems"]]
    assert not bad, "\n".join(bad)
    for rep in reports:
        for r in rep["rows"]:  # the rows' own numbers agree with their verdict
            assert r["shared"] <= kernel_resources.SM90.shared_per_block and r["stack"] == r["local"] == 0
            assert r["blocks_per_sm"] >= 1 and 0 < r["registers"] <= 255


def test_16_bit_products_run_on_tensor_cores_and_fp32_search_and_step_too(reports):
    for rep in reports:
        for r in rep["rows"]:
            fp32 = r["config"].endswith("float32")
            if r["kernel"] in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel"):
                assert (r["tensor_cores"] != "") != fp32, r  # fp32 attention on CUDA cores (ieee), on purpose
            if r["kernel"] == "_search_kernel":
                assert r["tensor_cores"] == "wgmma", r  # fp32 as three TF32 products
            if r["kernel"] in ("_ln_qkv_kernel", "_proj_residual_kernel", "_mlp_kernel"):
                assert r["tensor_cores"] == "mma", r  # 16 rows: mma.sync (wgmma needs 64)


def test_sum_atomics_are_relaxed_and_only_where_asked_for(reports):
    for rep in reports:
        for r in rep["rows"]:
            if r["kernel"] == "_decode_kernel":  # a split cache's counter: acquire-release, its reset relaxed
                assert r["atomics"] in ("", "acq_rel, relaxed"), r
                continue
            sums = ("atomic dQ" in r["config"] and r["kernel"] == "_bwd_kv_kernel") or (
                "atomics" in r["config"] and r["kernel"] == "_search_kernel") or r["kernel"] == "_mlp_kernel"
            assert r["atomics"] == ("relaxed" if sums else ""), r


def test_width_150_loads_more_than_one_element_at_a_time(reports):
    # Heads of 150 start 300 bytes apart: 4-byte loads (2 × 16-bit, 1 × fp32 is already 4) at best,
    # where the unhinted kernels loaded 2 bytes.
    for rep in reports:
        for r in rep["rows"]:
            if "d=150" in r["config"]:
                assert r["load_bytes"] >= 4, r


def test_the_blocks_per_sm_arithmetic():
    limits = kernel_resources.SM90
    assert kernel_resources.blocks_per_sm(255, 8, 0, limits) == 1  # 255 → 256 regs × 256 threads = 64 Ki
    assert kernel_resources.blocks_per_sm(128, 4, 0, limits) == 4
    assert kernel_resources.blocks_per_sm(32, 4, 100 * 1024, limits) == 2  # shared memory binds
    assert kernel_resources.blocks_per_sm(16, 1, 0, limits) == 32  # the per-SM block cap
