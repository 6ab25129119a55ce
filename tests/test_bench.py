"""The benchmark runs and reports what it promises (its numbers are not asserted: machines are noisy)."""

import json

import pytest
import torch

from conftest import SHARED_DATA, run_cli


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data")
def test_bench_runs_and_writes_json(tmp_path):
    proc = run_cli("mindiff.bench", "cases=[mnist,sample]", "precisions=[bf16]", "steps=3", f"data={SHARED_DATA}",
                   "tuned=[optim.fused=true]", "out=b.json", cwd=tmp_path)
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["matmul_peak_gflop_s"]) == {"fp32", "bf16"}
    rows = {(r["case"], r.get("impl"), r["precision"]): r for r in result["rows"]}
    assert rows[("mnist", "baseline", "fp32")]["images_per_s"] > 0
    mindiff = rows[("mnist", "mindiff", "bf16")]
    assert mindiff["ratio_vs_baseline_fp32"] > 0 and mindiff["gflop_s"] > 0 and mindiff["peak_rss_mb"] > 0
    tuned = rows[("mnist", "+tuned", "bf16")]
    assert tuned["overrides"] == ["optim.fused=true"] and tuned["ratio_vs_baseline_fp32"] > 0
    assert rows[("sample", None, "bf16")]["ms_per_euler_step"] > 0
    assert "x baseline" in proc.stdout and "ms per Euler step" in proc.stdout
    assert mindiff["ops_per_step"] > 0 and "ops (kernels) in the model's forward+backward" in proc.stdout


def test_the_op_count_sees_autocasts_casts():
    """What makes bf16 slower than fp32 on a launch-bound GPU: the same FLOPs in more kernels."""
    from mindiff.bench_runs import compose, step_counts
    cfg = compose(["model.hidden_dim=64", "model.class_embed_dim=8"])
    fp32, bf16 = (step_counts(cfg, "cpu", precision) for precision in ("fp32", "bf16"))
    assert fp32["flops_per_image"] == bf16["flops_per_image"] > 0
    assert bf16["ops_per_step"] > fp32["ops_per_step"] > 10


def test_bench_rejects_an_unknown_case(tmp_path):
    proc = run_cli("mindiff.bench", "cases=[gan]", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "choose from mnist, ae, ldm, sample" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_the_gpu_suite_says_in_one_line_that_there_is_no_gpu(tmp_path):
    proc = run_cli("mindiff.bench", "suite=gpu", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["mindiff.bench: error: suite=gpu needs a CUDA GPU and this machine "
                                                "has none (torch.cuda.is_available() is False); run the CPU suite "
                                                "without suite=gpu"]


@pytest.mark.skipif(not torch.cuda.is_available() or not (SHARED_DATA / "MNIST" / "raw").is_dir(),
                    reason="needs a GPU and ../shared/data")
def test_the_gpu_suite_compares_with_the_authors_loop_and_times_a_30_epoch_run(tmp_path):
    proc = run_cli("mindiff.bench", "suite=gpu", "cases=[mnist]", f"data={SHARED_DATA}", "out=g.json", cwd=tmp_path,
                   timeout=900)
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["baseline_workers"] >= 1 and result["mnist_30_epochs"]["wall_s"] > 0
    assert {r.get("impl") for r in result["rows"]} == {"baseline", "mindiff", "+tuned"}
    assert "30 epochs through the trainer" in proc.stdout
