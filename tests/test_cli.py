"""The turboquant console script."""

import json

import pytest

from turboquant.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_codebook_json(capsys):
    code, out, _ = run(capsys, "codebook", "--dim", "128", "--bits", "3", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) >= {"centroids", "boundaries", "mse_total"}
    assert len(data["centroids"]) == 8 and len(data["boundaries"]) == 7
    assert data["mse_total"] == pytest.approx(0.034, abs=0.001)


def test_codebook_any_dim(capsys):
    code, out, _ = run(capsys, "codebook", "--dim", "100", "--bits", "2")
    assert code == 0 and "D_mse" in out


def test_presets(capsys):
    code, out, _ = run(capsys, "presets", "--dim", "128", "--json")
    rows = {r["preset"]: r for r in json.loads(out)}
    assert rows["tq3"]["bytes_per_token_per_kv_head"] == 104 and rows["tq3"]["compression_vs_bf16"] > 4.9
    code, out, _ = run(capsys, "presets", "--dim", "96")
    assert code == 0 and "power-of-two" in out  # tq3_hadamard cannot serve d=96: said, not hidden


@pytest.mark.parametrize("mode", ["mse", "prod"])
def test_distortion_within_bounds(capsys, mode):
    code, out, _ = run(capsys, "distortion", "--dim", "128", "--bits", "3", "--mode", mode, "--n", "4000", "--json")
    r = json.loads(out)
    assert code == 0 and r["within_bounds"] and r["lower_bound"] < r["empirical"] < r["upper_bound"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["codebook", "--dim", "128", "--bits", "7"], "--bits=7 is not supported"),
        (["distortion", "--dim", "64", "--bits", "2", "--mode", "fast"], "--mode='fast' is not supported"),
        (["codebook", "--dim", "2", "--bits", "2"], "--dim must be >= 3"),
    ],
)
def test_cli_errors_name_the_option(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err


def test_cli_rejects_non_integer(capsys):
    with pytest.raises(SystemExit) as e:
        main(["codebook", "--dim", "abc", "--bits", "2"])
    assert e.value.code == 2 and "--dim must be an integer" in capsys.readouterr().err


def test_report_quick(capsys):
    code, out, _ = run(capsys, "report", "--quick")
    assert code == 0 and "Presets" in out and "attn_rel_err" in out


@pytest.mark.parametrize("args,needle", [
    (["--configs", "bf16,tq9"], "'tq9' is not supported"),
    (["--configs", "tq2.5"], "outlier-channel split"),
    (["--configs", ""], "at least one config"),
    (["--prompts", "0"], "prompts=0 must be a positive integer"),
    (["--dtype", "float64"], "dtype='float64' is not supported"),
])
def test_demo_rejects_bad_options(capsys, args, needle):
    code, _, err = run(capsys, "demo", "--model", ".", *args)
    assert code == 2 and needle in err


def test_no_module_imports_the_command_line():
    """turboquant.cli is the entry point only: the library modules it runs never import it back."""
    import ast
    import pathlib

    import turboquant

    root = pathlib.Path(turboquant.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert "turboquant.cli" not in names, path


@pytest.mark.parametrize("config,kw,needle", [
    ("tq9", {}, "'tq9' is not supported; allowed values: ['bf16', 'fp8'], vLLM's ['turboquant_k8v4'"),
    ("turboquant_4bit_nc", {"vllm_turboquant": False}, "allowed values: ['bf16', 'fp8'], the presets ['tq4'"),
    ("tq2.5", {"outlier_split": False}, "preset 'tq2.5' has an outlier-channel split"),
])
def test_check_config_names_the_allowed_configs(config, kw, needle):
    from turboquant.vllm_integration.engine_configs import check_config

    with pytest.raises(ValueError) as e:
        check_config(config, **kw)
    assert needle in str(e.value)
    check_config(config if config != "tq9" else "fp8")  # allowed by default (all configs but unknown names)


def test_demo_serves_the_builtin_model_in_its_stored_dtype():
    """vLLM warns once per weight when it casts the checkpoint's dtype to the served one."""
    from turboquant.vllm_integration.demo import DemoSettings, builtin_model

    model = builtin_model()
    served = DemoSettings(model=model).dtype
    with open(f"{model}/config.json") as f:
        assert json.load(f)["dtype"] == served
    with open(f"{model}/model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    assert {t["dtype"] for t in header.values()} == {{"bfloat16": "BF16", "float16": "F16"}[served]}
