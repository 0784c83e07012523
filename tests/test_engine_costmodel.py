"""Engine catalogs (GPUs, models, Hugging Face config.json) and the roofline step-time model.

The calibration tests check the published figures cited in docs/engine-model.md, with the
tolerances stated there.
"""

from __future__ import annotations

import dis
import itertools
import json
import random
from pathlib import Path

import pytest

from slobench.engine.core import StepCostModel, StepShape
from slobench.engine.costmodel import (
    MIN_KV_TOKENS,
    CostFactors,
    RooflineCostModel,
    load_factors,
    prefill_shape,
)
from slobench.engine.hardware import (
    GIB,
    GPUS,
    get_gpu,
    gpu_names,
    load_gpu_file,
    resolve_gpu,
)
from slobench.engine.models import (
    MODELS,
    PUBLISHED_ACTIVE,
    dtype_bytes,
    get_model,
    load_hf_config,
    resolve_model,
)
from slobench.errors import UserError

# --------------------------------------------------------------------------- GPU catalog

REQUIRED_GPUS = ("h100-sxm", "h200", "a100-80gb", "a100-40gb", "l40s", "l4", "b200", "mi300x")


def test_gpu_catalog_has_the_required_gpus_with_positive_numbers():
    for name in REQUIRED_GPUS:
        g = GPUS[name]
        assert g.bf16_tflops > 0 and g.hbm_tb_s > 0 and g.memory_gib > 0
        assert g.interconnect_gb_s > 0 and g.source
        if g.fp8_tflops is not None:  # dense FP8 is twice dense BF16 on every listed part
            assert g.fp8_tflops == pytest.approx(2 * g.bf16_tflops, rel=0.02)


def test_gpu_datasheet_numbers_are_dense_figures():
    h100 = get_gpu("h100")
    assert h100.bf16_tflops == pytest.approx(989, rel=0.01)  # 1,979 "with sparsity" / 2
    assert h100.hbm_tb_s == 3.35 and h100.memory_gib == 80
    assert get_gpu("a100").fp8_tflops is None
    assert get_gpu("a100").fp8_flops == get_gpu("a100").bf16_flops  # no FP8 units: BF16 rate
    assert get_gpu("h200").hbm_tb_s == 4.8 and get_gpu("h200").memory_gib == 141
    assert get_gpu("mi300x").bf16_tflops == pytest.approx(1307.4)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("h100", "h100-sxm"),
        ("H100-SXM", "h100-sxm"),
        ("NVIDIA H100 SXM5", "h100-sxm"),
        ("h100_80gb", "h100-sxm"),
        ("a100-80gb", "a100-80gb"),
        ("A100 80GB", "a100-80gb"),
        ("a100", "a100-80gb"),
        ("a100-40GB", "a100-40gb"),
        ("H200", "h200"),
        ("l40s", "l40s"),
        ("L4", "l4"),
        ("b200", "b200"),
        ("AMD MI300X", "mi300x"),
        ("mi300", "mi300x"),
    ],
)
def test_gpu_lookup_is_forgiving(text, name):
    assert get_gpu(text).name == name


def test_unknown_gpu_lists_the_names_and_suggests_one():
    with pytest.raises(UserError) as exc:
        get_gpu("h1000")
    msg = str(exc.value)
    assert "unknown GPU 'h1000'" in msg and "did you mean" in msg
    for name in gpu_names():
        assert name in msg
    assert "\n" not in msg


def test_mesh_interconnect_uses_only_the_links_of_the_group():
    mi = get_gpu("mi300x")
    assert mi.interconnect_bytes_s(8) == pytest.approx(448e9)
    assert mi.interconnect_bytes_s(2) == pytest.approx(448e9 / 7)
    h = get_gpu("h100")
    assert h.interconnect_bytes_s(2) == h.interconnect_bytes_s(8) == pytest.approx(450e9)


def test_gpu_from_json_and_toml_files(tmp_path: Path):
    j = tmp_path / "mygpu.json"
    j.write_text(json.dumps({"name": "rtx-6000", "bf16_tflops": 200, "fp8_tflops": 400,
                             "hbm_tb_s": 0.96, "memory_gib": 48, "interconnect_gb_s": 32}))
    g = load_gpu_file(j)
    assert g.name == "rtx-6000" and g.hbm_bytes_s == pytest.approx(0.96e12)
    assert resolve_gpu(str(j)) == g
    t = tmp_path / "mygpu.toml"
    t.write_text('name = "x"\nbf16_tflops = 100\nhbm_tb_s = 1.0\nmemory_gib = 24\n'
                 'interconnect_gb_s = 25\nallreduce_latency_us = 30\n')
    g2 = load_gpu_file(t)
    assert g2.allreduce_latency_us == 30 and g2.fp8_tflops is None
    # usable in the cost model straight away
    assert RooflineCostModel("qwen2.5-7b", t).kv_capacity_tokens() > 0


def test_gpu_file_errors_name_the_file_and_field(tmp_path: Path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"bf16_tflops": 100, "hbm_tb_s": 1, "memory_gib": 24}))
    with pytest.raises(UserError, match=r"g\.json.*missing field 'interconnect_gb_s'"):
        load_gpu_file(p)
    p.write_text(json.dumps({"bf16_tflops": 100, "hbm_tb_s": 1, "memory_gib": 24,
                             "interconnect_gb_s": 1, "hbm_gbps": 3}))
    with pytest.raises(UserError, match=r"unknown field 'hbm_gbps'; valid fields: name"):
        load_gpu_file(p)
    p.write_text(json.dumps({"bf16_tflops": -1, "hbm_tb_s": 1, "memory_gib": 24,
                             "interconnect_gb_s": 1}))
    with pytest.raises(UserError, match=r"'bf16_tflops' must be a positive number"):
        load_gpu_file(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match=r"g\.json' is not valid JSON"):
        load_gpu_file(p)
    with pytest.raises(UserError, match="does not exist"):
        load_gpu_file(tmp_path / "missing.json")


# --------------------------------------------------------------------------- model catalog

REQUIRED_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen2.5-72b", "qwen3-8b",
                   "qwen3-32b", "mixtral-8x7b")


def test_model_catalog_has_the_required_models():
    for name in REQUIRED_MODELS:
        assert MODELS[name].source.startswith("huggingface.co/")
    assert any(n.startswith("deepseek-r1-distill") for n in MODELS)
    assert MODELS["mixtral-8x7b"].experts == 8 and MODELS["mixtral-8x7b"].top_k == 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_counts_match_the_published_sizes(name):
    m = MODELS[name]
    assert m.published_params > 0
    assert m.total_params == pytest.approx(m.published_params, rel=0.02)


def test_parameter_counts_are_exact_where_the_checkpoint_says():
    # safetensors totals on the Hugging Face model pages
    assert MODELS["llama-3.1-8b"].total_params == 8_030_261_248
    assert MODELS["llama-3.1-70b"].total_params == 70_553_706_496
    assert MODELS["qwen2.5-7b"].total_params == 7_615_616_512


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_moe_active_parameters_match_the_published_sizes(name):
    m = MODELS[name]
    assert m.is_moe
    assert m.active_params == pytest.approx(PUBLISHED_ACTIVE[name], rel=0.02)
    assert m.active_params < m.total_params


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("llama-3.1-8b", "bf16", 131072),  # 32 layers x 8 KV heads x 128 x 2 (K,V) x 2 B
        ("llama-3.1-8b", "fp8", 65536),
        ("llama-3.1-8b", "fp8_e4m3", 65536),
        ("llama-3.1-70b", "bf16", 327680),  # 80 x 8 x 128 x 2 x 2
        ("qwen2.5-7b", "bf16", 57344),  # 28 x 4 x 128 x 2 x 2
        ("qwen3-8b", "bf16", 147456),  # 36 x 8 x 128 x 2 x 2
        ("qwen3-32b", "fp16", 262144),  # 64 x 8 x 128 x 2 x 2
        ("mixtral-8x7b", "bf16", 131072),
    ],
)
def test_kv_bytes_per_token_is_exact(name, dtype, expected):
    assert MODELS[name].kv_bytes_per_token(dtype) == expected


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("llama3.1-8b", "llama-3.1-8b"),
        ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
        ("qwen3-8b", "qwen3-8b"),
        ("QWEN3_32B", "qwen3-32b"),
        ("mixtral", "mixtral-8x7b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-r1-distill-qwen-7b"),
    ],
)
def test_model_lookup_is_forgiving(text, name):
    assert get_model(text).name == name


def test_unknown_model_lists_the_names():
    with pytest.raises(UserError) as exc:
        get_model("llama-9-8b")
    msg = str(exc.value)
    assert "unknown model 'llama-9-8b'" in msg and "config.json" in msg
    for name in MODELS:
        assert name in msg


def test_dtype_names_are_forgiving_and_checked():
    assert dtype_bytes("bfloat16") == 2 and dtype_bytes("FP8") == 1 and dtype_bytes("auto") == 2
    with pytest.raises(UserError, match="unknown weight dtype 'fp6'; use one of"):
        dtype_bytes("fp6", "weight dtype")


# --------------------------------------------------------------------------- config.json

LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "auto_map": {"AutoModelForCausalLM": "evil.Model"},  # never imported or executed
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def _write(tmp_path: Path, cfg: dict, name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def test_hf_config_llama_matches_the_catalog(tmp_path: Path):
    spec = load_hf_config(_write(tmp_path, LLAMA_8B_CONFIG))
    cat = MODELS["llama-3.1-8b"]
    assert spec.head_dim == 128  # default hidden / heads
    assert spec.total_params == cat.total_params
    assert spec.kv_bytes_per_token() == cat.kv_bytes_per_token()
    assert spec.max_context == 131072 and not spec.is_moe
    # a folder holding config.json works, and so does resolve_model with a path
    assert load_hf_config(tmp_path).total_params == cat.total_params
    assert resolve_model(str(tmp_path / "config.json")).layers == 32


def test_hf_config_qwen2_and_qwen3(tmp_path: Path):
    qwen2 = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
             "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
             "vocab_size": 152064, "tie_word_embeddings": False}
    spec = load_hf_config(_write(tmp_path, qwen2))
    assert spec.qkv_bias and spec.total_params == MODELS["qwen2.5-7b"].total_params
    qwen3 = {"model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 25600,
             "num_attention_heads": 64, "num_hidden_layers": 64, "num_key_value_heads": 8,
             "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
             "attention_bias": False}
    spec = load_hf_config(_write(tmp_path, qwen3))
    assert spec.head_dim == 128 and spec.qk_norm and not spec.qkv_bias
    assert spec.total_params == MODELS["qwen3-32b"].total_params


def test_hf_config_moe_field_names(tmp_path: Path):
    mixtral = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
               "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
               "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2}
    spec = load_hf_config(_write(tmp_path, mixtral))
    assert spec.experts == 8 and spec.top_k == 2
    assert spec.active_params == MODELS["mixtral-8x7b"].active_params
    qwen3_moe = {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
                 "num_attention_heads": 32, "num_hidden_layers": 48, "num_key_value_heads": 4,
                 "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False}
    spec = load_hf_config(_write(tmp_path, qwen3_moe))
    assert spec.total_params == MODELS["qwen3-30b-a3b"].total_params
    assert spec.active_params == pytest.approx(3.3e9, rel=0.02)


def test_hf_config_tied_embeddings_and_text_config(tmp_path: Path):
    small = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
             "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
             "vocab_size": 151936, "tie_word_embeddings": True}
    spec = load_hf_config(_write(tmp_path, small))
    assert spec.tied_embeddings
    assert spec.total_params == pytest.approx(0.49e9, rel=0.02)  # Qwen2.5-0.5B: 0.49B
    wrapped = {"model_type": "llava", "text_config": dict(LLAMA_8B_CONFIG)}
    assert load_hf_config(_write(tmp_path, wrapped)).layers == 32


def test_hf_config_errors(tmp_path: Path):
    cfg = dict(LLAMA_8B_CONFIG)
    del cfg["num_hidden_layers"]
    p = _write(tmp_path, cfg)
    with pytest.raises(UserError) as exc:
        load_hf_config(p)
    assert str(p) in str(exc.value) and "missing field 'num_hidden_layers'" in str(exc.value)
    cfg = dict(LLAMA_8B_CONFIG, num_local_experts=8)
    with pytest.raises(UserError, match="missing field 'num_experts_per_tok'"):
        load_hf_config(_write(tmp_path, cfg))
    cfg = dict(LLAMA_8B_CONFIG, num_key_value_heads=0)
    with pytest.raises(UserError, match="'num_key_value_heads' must be a whole number"):
        load_hf_config(_write(tmp_path, cfg))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 4096,')
    with pytest.raises(UserError, match=r"bad\.json' is not valid JSON"):
        load_hf_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="must hold a JSON object"):
        load_hf_config(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_hf_config(tmp_path / "nowhere" / "config.json")
    with pytest.raises(UserError, match="does not exist"):
        load_hf_config(tmp_path / "empty-dir-without-config")
    mla = dict(LLAMA_8B_CONFIG, model_type="deepseek_v3", kv_lora_rank=512)
    with pytest.raises(UserError, match="not modelled yet"):
        load_hf_config(_write(tmp_path, mla))


# --------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def llama8b_h100() -> RooflineCostModel:
    return RooflineCostModel("llama-3.1-8b", "h100")


def decode(batch: int, context: int) -> StepShape:
    return StepShape(num_seqs=batch, prefill_tokens=0, decode_tokens=batch,
                     kv_read_tokens=batch * context, prefill_attn_pairs=0.0)


def test_it_is_a_step_cost_model(llama8b_h100):
    model: StepCostModel = llama8b_h100
    assert model.step_time(decode(1, 100)) > 0
    assert isinstance(model.kv_capacity_tokens(), int)


def test_decode_step_at_batch_1_is_near_5_to_7_ms(llama8b_h100):
    """Llama-3.1-8B bf16 on one H100: memory bound, 15 GB of weights / 3.35 TB/s = 4.5 ms at the
    datasheet peak; a measured decode step is 5-7 ms (docs/engine-model.md)."""
    t = llama8b_h100.step_time(decode(1, 256))
    assert 0.005 <= t <= 0.007
    floor = llama8b_h100.weight_bytes / get_gpu("h100").hbm_bytes_s
    assert t > floor  # never faster than reading the weights at the datasheet peak
    assert llama8b_h100.breakdown(decode(1, 256))["bound"] == "memory"


def test_decode_step_at_batch_64_with_1k_context_is_10_to_15_ms(llama8b_h100):
    assert 0.010 <= llama8b_h100.step_time(decode(64, 1024)) <= 0.015


def test_ttft_of_a_256_token_prompt_at_low_load_is_60_to_120_ms(llama8b_h100):
    ttft = llama8b_h100.ttft_estimate_s(256)
    assert 0.060 <= ttft <= 0.120
    # the GPU's share is a few ms (256 tokens x 16 GFLOP = 4 TFLOP); the rest is the frontend
    gpu = llama8b_h100.prefill_step_s(256)
    assert 0.004 <= gpu <= 0.015
    assert ttft == pytest.approx(llama8b_h100.admission_delay_s(256) + gpu)


def test_kv_capacity_of_llama_8b_on_h100_is_450k_to_500k_tokens(llama8b_h100):
    # (80 GiB x 0.9 - 14.96 GiB weights - 1.5 GiB reserve) / 128 KiB per token
    assert 450_000 <= llama8b_h100.kv_capacity_tokens() <= 500_000


def test_large_prefill_is_compute_bound_at_a_plausible_rate(llama8b_h100):
    b = llama8b_h100.breakdown(prefill_shape(8192))
    assert b["bound"] == "compute"
    rate = 8192 / b["total_s"]
    assert 20_000 <= rate <= 60_000  # tokens/s: 40-75% of the BF16 peak at 16 GFLOP/token


def test_throughput_never_exceeds_the_roofline(llama8b_h100):
    g = get_gpu("h100")
    for batch in (1, 16, 64, 256):
        t = llama8b_h100.step_time(decode(batch, 2048))
        assert t >= llama8b_h100.weight_bytes * 0.9 / g.hbm_bytes_s
        assert t >= 2 * MODELS["llama-3.1-8b"].active_params * batch / g.bf16_flops


# --------------------------------------------------------------------------- behaviour

CONFIGS = [
    ("llama-3.1-8b", "h100", 1),
    ("llama-3.1-8b", "h100", 2),
    ("mixtral-8x7b", "h100", 2),
    ("qwen3-30b-a3b", "h200", 1),
    ("llama-3.1-70b", "mi300x", 2),
    ("qwen2.5-7b", "l4", 1),
]


def _shapes(seed: int = 1, n: int = 300) -> list[StepShape]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d = rng.choice([0, 1, 3, 17, 64, 255])
        p = rng.choice([0, 0, 1, 128, 1000, 8192])
        chunks = 1 if p else 0
        if d + p == 0:
            d = 1
        ctx = rng.choice([0, 100, 4000])
        kv = d * rng.choice([0, 10, 1000, 30000]) + ctx * chunks
        pairs = p * (ctx + (p + 1) / 2) if p else 0.0
        out.append(StepShape(d + chunks, p, d, kv, pairs))
    return out


@pytest.mark.parametrize(("model", "gpu", "tp"), CONFIGS)
def test_more_work_is_never_faster(model, gpu, tp):
    cm = RooflineCostModel(model, gpu, tp=tp)
    for s in _shapes():
        base = cm.step_time(s)
        bigger = [
            StepShape(s.num_seqs + 1, s.prefill_tokens, s.decode_tokens + 1,
                      s.kv_read_tokens + 500, s.prefill_attn_pairs),
            StepShape(s.num_seqs, s.prefill_tokens + 64, s.decode_tokens, s.kv_read_tokens,
                      s.prefill_attn_pairs + 64 * 2000),
            StepShape(s.num_seqs, s.prefill_tokens, s.decode_tokens, s.kv_read_tokens * 2 + 1,
                      s.prefill_attn_pairs),
            StepShape(s.num_seqs + 1, s.prefill_tokens, s.decode_tokens, s.kv_read_tokens,
                      s.prefill_attn_pairs),
        ]
        for b in bigger:
            assert cm.step_time(b) >= base, (s, b)


@pytest.mark.parametrize(("model", "gpu", "tp"), CONFIGS)
def test_breakdown_agrees_with_step_time(model, gpu, tp):
    cm = RooflineCostModel(model, gpu, tp=tp)
    for s in _shapes(seed=2, n=100):
        assert cm.breakdown(s)["total_s"] == pytest.approx(cm.step_time(s), rel=1e-9)


def test_prefill_of_a_growing_prompt_grows_superlinearly_through_attention(llama8b_h100):
    short = llama8b_h100.prefill_step_s(4096, context=0)
    late = llama8b_h100.prefill_step_s(4096, context=60_000)
    assert late > short * 1.3  # the same chunk attends to 60k cached tokens


def test_tensor_parallelism_speeds_large_prefill_but_pays_the_all_reduce():
    tp1 = RooflineCostModel("llama-3.1-8b", "h100", tp=1)
    tp2 = RooflineCostModel("llama-3.1-8b", "h100", tp=2)
    big = prefill_shape(8192)
    assert tp2.step_time(big) < 0.75 * tp1.step_time(big)
    for s in [*_shapes(seed=3, n=100), big, decode(1, 10)]:
        ar = tp2.breakdown(s)["allreduce_s"]
        assert ar >= 2 * 32 * tp2.allreduce_latency_s
        assert tp2.step_time(s) >= ar
    # at batch 1 the all-reduce latency is a visible part of the step
    assert tp2.breakdown(decode(1, 10))["allreduce_s"] == pytest.approx(
        2 * 32 * 8e-6, rel=0.05)


def test_tp_must_divide_the_heads():
    with pytest.raises(UserError, match=r"tp=3 does not divide llama-3\.1-8b's 32 attention heads"):
        RooflineCostModel("llama-3.1-8b", "h100", tp=3)
    with pytest.raises(UserError, match="whole number"):
        RooflineCostModel("llama-3.1-8b", "h100", tp=0)


def test_kv_heads_replicate_beyond_their_count():
    tp16 = RooflineCostModel("llama-3.1-70b", "h100", tp=16)
    assert tp16.kv_replication == 2  # 8 KV heads over 16 GPUs


def test_moe_computes_with_active_params_but_reads_all_experts():
    mix = RooflineCostModel("mixtral-8x7b", "h100", tp=2)
    m = mix.model
    n = 4096
    b = mix.breakdown(prefill_shape(n))
    matmul = b["flops"] - b["attention_flops"] - 2 * m.lm_head_params
    assert matmul == pytest.approx(2 * m.active_layer_matmul_params * n)
    assert m.active_layer_matmul_params < 0.3 * m.layer_matmul_params  # top-2 of 8 experts
    # memory: a batch of 64 decode tokens touches (almost) every expert: all weights are read
    wide = mix.breakdown(decode(64, 100))["weight_bytes_read"]
    all_weights = mix.weight_bytes - m.embedding_params * 2
    assert wide == pytest.approx(all_weights, rel=1e-4)
    # one token reads only its top-2 experts: about the active parameters
    one = mix.breakdown(decode(1, 100))["weight_bytes_read"]
    active = (m.active_params - m.embedding_params) * 2
    assert one == pytest.approx(active, rel=0.01)
    # so a wide decode step costs far more than 12.9B active params would suggest
    assert mix.step_time(decode(64, 100)) > 2.5 * mix.step_time(decode(1, 100))


def test_fp8_weights_and_kv():
    bf16 = RooflineCostModel("llama-3.1-8b", "h100")
    fp8w = RooflineCostModel("llama-3.1-8b", "h100", weight_dtype="fp8")
    fp8kv = RooflineCostModel("llama-3.1-8b", "h100", kv_dtype="fp8")
    assert fp8w.step_time(decode(1, 10)) < 0.65 * bf16.step_time(decode(1, 10))
    assert fp8w.kv_capacity_tokens() > bf16.kv_capacity_tokens()
    assert abs(fp8kv.kv_capacity_tokens() - 2 * bf16.kv_capacity_tokens()) <= 2
    with pytest.raises(UserError, match="KV dtype 'int4' is not supported"):
        RooflineCostModel("llama-3.1-8b", "h100", kv_dtype="int4")


def test_70b_bf16_on_one_h100_does_not_fit_and_says_what_to_do():
    with pytest.raises(UserError) as exc:
        RooflineCostModel("llama-3.1-70b", "h100")
    msg = str(exc.value)
    assert "does not fit on 1 x h100-sxm" in msg
    assert "GiB missing" in msg and "tp=2" in msg and "fp8" in msg
    missing = float(msg.split(" GiB missing")[0].rsplit(" ", 1)[1])
    assert 55 <= missing <= 70  # 131 GiB of weights vs ~70 GiB usable
    assert "\n" not in msg
    assert RooflineCostModel("llama-3.1-70b", "h100", tp=2).kv_capacity_tokens() > MIN_KV_TOKENS
    assert RooflineCostModel("llama-3.1-70b", "h100", tp=4).kv_capacity_tokens() > 400_000


def test_kv_capacity_formula_is_the_documented_one():
    cm = RooflineCostModel("qwen3-8b", "h200", tp=2)
    f = cm.factors
    budget = 2 * (141 * GIB * f.gpu_memory_utilization - f.reserve_gib * GIB) - cm.weight_bytes
    assert cm.kv_capacity_tokens() == int(budget // cm.model.kv_bytes_per_token())


# --------------------------------------------------------------------------- factors


def test_factor_overrides_from_json_and_toml(tmp_path: Path, llama8b_h100):
    j = tmp_path / "f.json"
    j.write_text(json.dumps({"step_overhead_s": 0.0014, "gpu_memory_utilization": 0.95}))
    f = load_factors(j)
    assert f.step_overhead_s == 0.0014 and f.gpu_memory_utilization == 0.95
    assert f.kv_bandwidth_efficiency == CostFactors().kv_bandwidth_efficiency  # untouched
    cm = RooflineCostModel("llama-3.1-8b", "h100", factors=f)
    s = decode(8, 500)
    assert cm.step_time(s) == pytest.approx(llama8b_h100.step_time(s) + 0.001)
    assert cm.kv_capacity_tokens() > llama8b_h100.kv_capacity_tokens()
    t = tmp_path / "f.toml"
    t.write_text("frontend_latency_s = 0.0\nweight_bandwidth_efficiency = 1.0\n")
    f2 = load_factors(t)
    cm2 = RooflineCostModel("llama-3.1-8b", "h100", factors=f2)
    assert cm2.ttft_estimate_s(256) < 0.02
    assert cm2.step_time(decode(1, 1)) < llama8b_h100.step_time(decode(1, 1))


def test_factor_file_errors(tmp_path: Path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"step_overhead": 0.001}))
    with pytest.raises(UserError) as exc:
        load_factors(p)
    msg = str(exc.value)
    assert "unknown factor 'step_overhead'" in msg and str(p) in msg
    for name in CostFactors.field_names():
        assert name in msg
    p.write_text(json.dumps({"prefill_compute_efficiency": 1.5}))
    with pytest.raises(UserError, match=r"factor 'prefill_compute_efficiency' = 1\.5"):
        load_factors(p)
    p.write_text(json.dumps({"seq_overhead_s": "fast"}))
    with pytest.raises(UserError, match="factor 'seq_overhead_s'"):
        load_factors(p)
    bad = tmp_path / "f.toml"
    bad.write_text("step_overhead_s = = 1")
    with pytest.raises(UserError, match="is not valid TOML"):
        load_factors(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_factors(tmp_path / "none.toml")


# --------------------------------------------------------------------------- speed and describe


def test_step_time_is_a_few_float_operations():
    """The simulator calls step_time once per engine step: no calls, no loops, a short body."""
    ins = list(dis.get_instructions(RooflineCostModel.step_time))
    names = {i.opname for i in ins}
    assert not any("CALL" in n for n in names), names
    assert not any(n in names for n in ("FOR_ITER", "GET_ITER", "BUILD_LIST", "BUILD_MAP"))
    assert len(ins) < 200


def test_describe_reports_the_derived_quantities(llama8b_h100):
    d = llama8b_h100.describe()
    assert d["params_total"] == 8_030_261_248
    assert d["kv_bytes_per_token"] == 131072
    assert d["kv_capacity_tokens"] == llama8b_h100.kv_capacity_tokens()
    assert 0.005 <= d["decode_step_floor_s"] <= 0.007
    assert d["prefill_tokens_per_s"] > 10_000
    assert 0.06 <= d["ttft_256_idle_s"] <= 0.12
    json.dumps(d)  # plain data for the CLI


@pytest.mark.parametrize(("model", "gpu"), list(itertools.product(
    ["llama-3.1-8b", "qwen2.5-7b", "qwen3-8b", "deepseek-r1-distill-qwen-7b"],
    ["h100", "h200", "a100-80gb", "a100-40gb", "l40s", "b200", "mi300x"])))
def test_every_small_model_fits_every_large_gpu(model, gpu):
    cm = RooflineCostModel(model, gpu)
    assert cm.kv_capacity_tokens() >= MIN_KV_TOKENS
    assert 0 < cm.step_time(decode(1, 100)) < 0.1
