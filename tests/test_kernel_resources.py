"""Every Triton kernel configuration the dispatch can choose at the released shapes fits an H200
block, compiled for sm_90 as a launch compiles it (``benchmarks/kernel_resources.py``), with the
Triton installed here and with Triton 3.6.0, the version on the GPU machines' image.

The full check (every configuration, both versions) takes minutes on two cores, so it is not
run here: its table, ``benchmarks/results/kernels_sm90.md``, is committed with the digest of the
kernel sources it compiled. These tests hold the table to the code:

- the table was written from today's ``kernels/*.py`` (a kernel changed since fails until the
  check is run again) and covers every configuration, with none over a limit;
- one configuration of every kernel and code path is compiled here, with both Triton versions,
  and must give the table's numbers (a table edited by hand, or tiles changed outside
  ``kernels/``, disagree);
- the table's rows keep the properties the kernels were built for (tensor cores, relaxed
  atomics, wide loads).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the resource check compiles Triton kernels")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import kernel_resources  # noqa: E402

GPU_IMAGE_TRITON = "3.6.0"  # the device tool's KINDS.md: the H200 image's Triton
TABLE = ROOT / "benchmarks" / "results" / "kernels_sm90.md"
COMPARED = ("kernel", "tiles", "warps", "stages", "shared (B)", "registers", "stack", "local", "blocks/SM",
            "matrix", "atomics", "load B", "pipelined", "loaded MB", "GFLOP", "ok")
PERFORMANCE = ("launches", "moved MB", "unique MB", "ratio", "GFLOP", "floor µs", "bytes µs", "pipelined", "bytes rule")


@pytest.fixture(scope="module")
def committed():
    digest, tables = kernel_resources.read_markdown(TABLE.read_text())
    return digest, tables


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample configurations compiled here, one report per Triton version."""
    from jukebox_fast.dispatch import interpreter_on

    if interpreter_on():
        pytest.skip("the resource check compiles for the GPU; it runs without TRITON_INTERPRET")
    out = tmp_path_factory.mktemp("resources") / "reports.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--sample", "--json", str(out),
           "--also-triton", GPU_IMAGE_TRITON]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert out.exists(), f"the check did not finish (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())["reports"]


def test_the_table_describes_todays_kernels(committed):
    digest, _ = committed
    assert digest == kernel_resources.sources_digest(), (
        "kernels/*.py changed since benchmarks/results/kernels_sm90.md was written: run "
        "`python benchmarks/kernel_resources.py --also-triton 3.6.0 --out benchmarks/results/kernels_sm90.md`")


def test_the_table_covers_every_configuration_on_both_versions_and_nothing_is_over(committed):
    _, tables = committed
    assert GPU_IMAGE_TRITON in tables and len(tables) >= 2, list(tables)  # the image's and a newer one
    expected = {(c.op, c.config) for c in kernel_resources.cases()}
    for version, rows in tables.items():
        assert {(r["op"], r["configuration"]) for r in rows} == expected, version
        bad = [f"{r['op']} | {r['configuration']} | {r['kernel']}: {r['ok']}" for r in rows if r["ok"] != "yes"]
        assert not bad, f"Triton {version}:\n" + "\n".join(bad)
        for r in rows:
            assert int(r["shared (B)"]) <= kernel_resources.SM90.shared_per_block and r["stack"] == r["local"] == "0"
            assert int(r["blocks/SM"]) >= 1 and 0 < int(r["registers"]) <= 255


def test_the_sample_compiles_to_the_tables_numbers_with_both_versions(sample, committed):
    import triton

    _, tables = committed
    assert [r["versions"]["triton"] for r in sample] == [triton.__version__, GPU_IMAGE_TRITON]
    compared = 0
    for rep in sample:
        version = rep["versions"]["triton"]
        assert not [r for r in rep["rows"] if r["problems"]], rep["rows"]
        if version not in tables:  # a newer Triton than the table's: the fit above is what can be checked
            continue
        # A case may compile one kernel several times (a step's layers of different kinds): its
        # rows are compared as a set per configuration.
        text = kernel_resources.markdown([rep])
        _, mine = kernel_resources.read_markdown(text)
        mine_perf, table_perf = kernel_resources.read_performance(text), kernel_resources.read_performance(TABLE.read_text())
        for config in {r["configuration"] for r in mine[version]}:
            def rows(source, columns=COMPARED):
                return sorted(tuple(r[k] for k in columns) for r in source if r["configuration"] == config)
            assert rows(mine[version]) == rows(tables[version]), f"Triton {version}: {config}"
            assert rows(mine_perf[version], PERFORMANCE) == rows(table_perf[version], PERFORMANCE), config
            compared += 1
    in_table = sum(rep["versions"]["triton"] in tables for rep in sample)
    assert in_table >= 1 and compared == in_table * len(kernel_resources.sample_cases())
    # every way the backward makes dQ is among them: later (a second kernel), atomics, stored
    modes = {t for rep in sample for r in rep["rows"] if r["kernel"] == "_bwd_kv_kernel" for t in r["tiles"].split(", ")}
    assert {"DQ=0", "DQ=1", "DQ=2"} <= modes, modes


def _rows(committed):
    return [(version, r) for version, rows in committed[1].items() for r in rows]


def test_16_bit_products_run_on_tensor_cores_and_fp32_search_and_step_too(committed):
    for version, r in _rows(committed):
        fp32 = r["configuration"].endswith("float32")
        if r["kernel"] in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel"):
            assert (r["matrix"] != "-") != fp32, (version, r)  # fp32 attention on CUDA cores (ieee), on purpose
        if r["kernel"] == "_search_kernel":
            assert r["matrix"] == "wgmma", (version, r)  # fp32 as three TF32 products
        if r["kernel"] in ("_qkv_kernel", "_proj_mlp_kernel"):
            assert r["matrix"] in ("mma", "wgmma"), (version, r)  # fp32 as three TF32 products


def test_sum_atomics_are_relaxed_and_only_where_asked_for(committed):
    for version, r in _rows(committed):
        if r["kernel"] == "_decode_kernel":  # a split cache's counter: acquire-release, its reset relaxed
            assert r["atomics"] in ("-", "acq_rel, relaxed"), (version, r)
            continue
        if r["kernel"] == "_proj_mlp_kernel":  # a relaxed ticket, acquire-release phase counts: no sums
            assert r["atomics"] == "acq_rel, relaxed", (version, r)
            continue
        sums = (r["kernel"] == "_bwd_kv_kernel" and "DQ=1" in r["tiles"]) or (
            "atomics" in r["configuration"] and r["kernel"] == "_search_kernel")
        assert r["atomics"] == ("relaxed" if sums else "-"), (version, r)
        if "DQ=1" in r["tiles"]:  # dQ's atomics only where the caller allowed them
            assert "atomic dQ" in r["configuration"], (version, r)


# Where the backward takes one pass at the released shapes (block_ctx 64, columns of 128): its key
# tiles hold whole blocks (block and previous-block layers) or a whole column.
ONE_PASS = {1: {("16-bit", 64), ("16-bit", 80), ("16-bit", 150), ("float32", 64), ("float32", 80)},
            2: {("16-bit", 64), ("16-bit", 80), ("float32", 64), ("float32", 80)}}
ONE_PASS[3] = ONE_PASS[1]


def test_block_column_and_previous_block_backwards_take_one_pass_where_their_tiles_allow(committed):
    seen = 0
    for version, r in _rows(committed):
        found = re.match(r"backward, .*kind (\d), d=(\d+), (\w+)$", r["configuration"])
        if r["kernel"] != "_bwd_kv_kernel" or not found:
            continue
        kind, d, dtype = int(found[1]), int(found[2]), "float32" if found[3] == "float32" else "16-bit"
        if (dtype, d) in ONE_PASS.get(kind, ()):
            assert "DQ=2" in r["tiles"], (version, r)
            seen += 1
    assert seen


def test_width_150_loads_more_than_one_element_at_a_time(committed):
    # Heads of 150 start 300 bytes apart: 4-byte loads (2 × 16-bit, 1 × fp32 is already 4) at best,
    # where the unhinted kernels loaded 2 bytes.
    for version, r in _rows(committed):
        if "d=150" in r["configuration"]:
            assert int(r["load B"]) >= 4, (version, r)


def test_every_hot_loop_streams(committed):
    # Pipelined "yes": every loop that multiplies or loads 2-D tiles is innermost, loads them by
    # asynchronous copies and keeps one in flight. "-": no such loop.
    for version, r in _rows(committed):
        known = kernel_resources.expected(r["op"], r["configuration"])
        if known is None or known.pipelined:
            assert r["pipelined"] in ("yes", "-"), (version, r)


def test_every_configuration_keeps_its_bytes_under_its_floor_or_says_which_issue_owns_it():
    perf = kernel_resources.read_performance(TABLE.read_text())
    assert GPU_IMAGE_TRITON in perf and len(perf) >= 2, list(perf)
    expected = {(c.op, c.config) for c in kernel_resources.cases()}
    for version, rows in perf.items():
        assert {(r["op"], r["configuration"]) for r in rows} == expected, version
        for r in rows:
            floor, spent = float(r["floor µs"]), float(r["bytes µs"])
            known = kernel_resources.expected(r["op"], r["configuration"])
            if r["bytes rule"] == "yes":
                assert spent <= kernel_resources.BYTES_RULE * floor + 0.1, (version, r)  # the table rounds to 0.1
            else:  # a known failure, bounded by its own ceiling
                assert known is not None and r["bytes rule"] == f"expected: {known.why}", (version, r)
                assert spent <= known.ceiling * floor + 0.1, (version, r)
            assert r["pipelined"] == "yes" or (known is not None and not known.pipelined), (version, r)


def test_the_ttgir_reader_holds_a_loop_of_tile_loads_without_a_product_to_the_same_rule():
    loads = """
    %r = scf.for %i = %lo to %hi step %c32 iter_args(%a = %z) -> (tensor<256xf32>) {
      %k_87 = tt.load %kp, %m, %c0 : tensor<32x256x!tt.ptr<bf16>> loc(#loc1)
      scf.yield %a : tensor<256xf32> loc(#loc2)
    } loc(#loc3)
"""
    assert kernel_resources.ttgir_facts(loads) == "no: no asynchronous copy; synchronous tile loads of k"
    streamed = loads.replace("%k_87 = tt.load %kp, %m, %c0 : tensor<32x256x!tt.ptr<bf16>> loc(#loc1)",
                             "%w = ttg.async_wait %t {num = 2 : i32} loc(#loc0)\n"
                             "      %k_87 = ttg.async_copy_global_to_local %kp, %buf mask %m : tensor<32x256x!tt.ptr<bf16>>")
    assert kernel_resources.ttgir_facts(streamed) == "yes"


def test_the_blocks_per_sm_arithmetic():
    limits = kernel_resources.SM90
    assert kernel_resources.blocks_per_sm(255, 8, 0, limits) == 1  # 255 → 256 regs × 256 threads = 64 Ki
    assert kernel_resources.blocks_per_sm(128, 4, 0, limits) == 4
    assert kernel_resources.blocks_per_sm(32, 4, 100 * 1024, limits) == 2  # shared memory binds
    assert kernel_resources.blocks_per_sm(16, 1, 0, limits) == 32  # the per-SM block cap


def test_a_table_read_back_gives_its_rows():
    row = {"op": "vq", "config": "search, x", "kernel": "_k", "tiles": "BLOCK_N=1", "warps": 4, "stages": 2,
           "shared": 10, "registers": 32, "stack": 0, "local": 0, "blocks_per_sm": 8, "tensor_cores": "",
           "atomics": "relaxed", "load_bytes": 16, "pipelined": "yes", "problems": ["too big"], "launches": 1, "loaded": 8.6e6,
           "stored": 1.4e6, "flops": 2e9, "precision": "tf32", "unique": 5e6, "op_flops": 1e9}
    text = kernel_resources.markdown([{"versions": {"triton": "9.9", "torch": "t", "python": "p", "target": "sm",
                                                   "commit": "c"}, "rows": [row]}])
    digest, tables = kernel_resources.read_markdown(text)
    assert digest == kernel_resources.sources_digest()
    (got,) = tables["9.9"]
    assert (got["configuration"], got["registers"], got["matrix"], got["ok"]) == ("search, x", "32", "-", "NO: too big")
    (perf,) = kernel_resources.read_performance(text)["9.9"]
    # 10 MB moved against 5 MB unique: 2.3 µs of traffic at 4.3 TB/s against a 1.3 µs floor (1 GFLOP at 790)
    assert (perf["moved MB"], perf["unique MB"], perf["ratio"], perf["floor µs"], perf["bytes µs"]) == (
        "10.0", "5.0", "2.00", "1.3", "2.3")
    assert perf["bytes rule"] == "NO"


# TTGIR as Triton prints it, cut to what the reader looks at.
_PIPELINED = """
    %r:2 = scf.for %i = %lo to %hi step %c64 iter_args(%a = %z, %t = %t0) -> (tensor<128x64xf32>, !ttg.async.token) {
      %kc_3 = ttg.async_wait %t {num = 1 : i32} loc(#loc1)
      %s_4 = ttng.warp_group_dot %q, %kc_3, %a {isAsync = true} : !ttg.memdesc<128x64xbf16> loc(#loc2)
      %lse = tt.load %p, %m : tensor<128x!tt.ptr<f32>> loc(#loc3)
      %kc_5 = ttg.async_copy_global_to_local %kp, %buf mask %mk other %c0 : tensor<64x64x!tt.ptr<bf16>> loc(#loc4)
      scf.yield %s_4, %kc_5 : tensor<128x64xf32>, !ttg.async.token loc(#loc5)
    } loc(#loc6)
"""


def test_the_ttgir_reader_calls_a_streamed_innermost_loop_pipelined():
    assert kernel_resources.ttgir_facts(_PIPELINED) == "yes"  # a 1-D load (lse) is not a streamed tile


def test_the_ttgir_reader_names_each_way_a_loop_fails_to_stream():
    drained = _PIPELINED.replace("{num = 1 : i32}", "{num = 0 : i32}")
    assert kernel_resources.ttgir_facts(drained) == "no: a wait drains every copy (num = 0)"
    sync = _PIPELINED.replace("%lse = tt.load %p, %m : tensor<128x!tt.ptr<f32>>",
                              "%vt_7 = tt.load %p, %m : tensor<64x64x!tt.ptr<bf16>>")
    assert kernel_resources.ttgir_facts(sync) == "no: synchronous tile loads of vt"
    nested = ("    %o = scf.for %j = %a to %b step %c {\n      %x = ttng.warp_group_dot %p, %v, %acc : f32\n"
              + _PIPELINED + "      scf.yield %x : f32\n    } loc(#l)\n")
    assert kernel_resources.ttgir_facts(nested) == (
        "no: a product sits in a loop around another loop (the key loop is not innermost); no asynchronous copy")
    assert kernel_resources.ttgir_facts("    tt.return loc(#l)\n") == "-"
