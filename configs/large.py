"""CoT fine-tuning of 0.5-12B checkpoints on GSM8K: Qwen2.5, Qwen3, Llama 3.x, Gemma 3.

    cotjax train --config=configs/large.py:model=llama3.1-8b,method=qlora,hardware=gpu80 \\
        --workdir=runs/llama8b_qlora --config.model=/path/to/Llama-3.1-8B-Instruct
    cotjax memory --config=configs/large.py:model=qwen2.5-7b,method=full,hardware=gpu8x80

Arguments:
  model     one of ARCHS below (default llama3.2-1b); `config.model` is its hub id: override it
            with a local HF directory when the hub is out of reach (no download happens here)
  method    full (fp32 master weights and Adam, bf16 compute, remat) | lora (bf16 base, rank 16
            on every projection) | qlora (the same on an NF4 base)
  hardware  gpu80 (one 80 GB GPU) | gpu8x80 (8 x 80 GB, FSDP over 8) | v5e-8 (8 x 16 GB TPU
            v5e chips, FSDP over 8) | v5p-64 (32 x 95 GB TPU v5p chips, FSDP over 32)

Every run: 1024-token rows, a global batch of 32 rows (8 micro-batches of 4 rows on one GPU;
4 rows per device on 8, 1 on 32), remat, loss logits 256 positions at a time (train.loss_chunk).
Per-device memory (GiB, `python benchmarks/memory_math.py`; the full table with every model is
docs/large_models.md), Llama-3.1-8B:

  full:   one 80 GB GPU 122.7 (does not fit: fp32 weights 29.9, gradients 29.9, Adam 59.8);
          8 x 80 GB 18.0; v5e-8 18.0 (does not fit 16 GB); v5p-64 4.5
  LoRA:   one 80 GB GPU 18.6 (bf16 base 15.1); 8 x 80 GB and v5e-8 5.4; v5p-64 1.7
  QLoRA:  one 80 GB GPU 9.3 (NF4 base 5.8); 8 x 80 GB and v5e-8 4.3; v5p-64 1.5
  Gemma-3-12B: full 180.3 on one GPU (no), 26.9 on 8 x 80 GB; QLoRA 13.5 on one GPU.

`config.model_arch` holds the architecture, so `cotjax memory` needs no download and
`--config.model=random` trains a random model of that shape (benchmarks).
"""

from cotjax import defaults

# ModelConfig fields of each architecture (from the models' config.json files).
_QWEN25 = dict(family="qwen2", vocab_size=151936, head_dim=128, norm_eps=1e-6, qkv_bias=True,
               rope={"theta": 1000000.0}, tie_embeddings=True)
_QWEN3 = dict(family="qwen3", vocab_size=151936, head_dim=128, norm_eps=1e-6, qk_norm=True,
              rope={"theta": 1000000.0}, tie_embeddings=True)
_LLAMA3 = dict(family="llama", vocab_size=128256, head_dim=128, norm_eps=1e-5,
               rope={"theta": 500000.0, "kind": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position": 8192},
               tie_embeddings=True)


def _gemma3(layers, window, **kw):
    return dict(family="gemma3", vocab_size=262208, head_dim=256, norm_eps=1e-6, qk_norm=True,
                act="gelu_tanh", gemma=True, query_scale=256 ** -0.5, tie_embeddings=True,
                rope={"theta": 1000000.0}, local_rope={"theta": 10000.0}, sliding_window=window,
                layer_types=tuple("full" if (i + 1) % 6 == 0 else "sliding" for i in range(layers)),
                num_layers=layers, **kw)


def _dims(d, layers, heads, kv, mlp):
    return dict(d_model=d, num_layers=layers, num_heads=heads, num_kv_heads=kv, mlp_dim=mlp)


ARCHS = {  # name: (hub id, ModelConfig fields)
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", {**_QWEN25, **_dims(896, 24, 14, 2, 4864),
                                                     "head_dim": 64}),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", {**_QWEN25, **_dims(1536, 28, 12, 2, 8960)}),
    "qwen2.5-3b": ("Qwen/Qwen2.5-3B-Instruct", {**_QWEN25, **_dims(2048, 36, 16, 2, 11008)}),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", {**_QWEN25, **_dims(3584, 28, 28, 4, 18944),
                                                 "vocab_size": 152064, "tie_embeddings": False}),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", {**_QWEN3, **_dims(1024, 28, 16, 8, 3072)}),
    "qwen3-1.7b": ("Qwen/Qwen3-1.7B", {**_QWEN3, **_dims(2048, 28, 16, 8, 6144)}),
    "qwen3-4b": ("Qwen/Qwen3-4B", {**_QWEN3, **_dims(2560, 36, 32, 8, 9728)}),
    "qwen3-8b": ("Qwen/Qwen3-8B", {**_QWEN3, **_dims(4096, 36, 32, 8, 12288),
                                   "tie_embeddings": False}),
    "llama3.2-1b": ("meta-llama/Llama-3.2-1B-Instruct", {**_LLAMA3, **_dims(2048, 16, 32, 8, 8192),
                                                         "head_dim": 64}),
    "llama3.2-3b": ("meta-llama/Llama-3.2-3B-Instruct", {**_LLAMA3, **_dims(3072, 28, 24, 8, 8192)}),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", {
        **_LLAMA3, **_dims(4096, 32, 32, 8, 14336), "tie_embeddings": False,
        "rope": {**_LLAMA3["rope"], "factor": 8.0}}),
    "gemma3-1b": ("google/gemma-3-1b-it", {**_gemma3(26, 512, d_model=1152, num_heads=4,
                                                     num_kv_heads=1, mlp_dim=6912),
                                           "vocab_size": 262144}),
    "gemma3-4b": ("google/gemma-3-4b-it", _gemma3(34, 1024, d_model=2560, num_heads=8,
                                                  num_kv_heads=4, mlp_dim=10240)),
    "gemma3-12b": ("google/gemma-3-12b-it", _gemma3(48, 1024, d_model=3840, num_heads=16,
                                                    num_kv_heads=8, mlp_dim=15360)),
}
# (data, fsdp, tensor) mesh and rows per device per micro-batch of each machine.
HARDWARE = {"gpu80": ((1, 1, 1), 80), "gpu8x80": ((1, 8, 1), 80), "v5e-8": ((1, 8, 1), 16),
            "v5p-64": ((1, 32, 1), 95)}  # name: (mesh, GB per device)
METHODS = ("full", "lora", "qlora")
GLOBAL_ROWS = 32


def get_config(arg=None):
    a = defaults.parse_arg(arg, model="llama3.2-1b", method="full", hardware="gpu80")
    if a.model not in ARCHS:
        raise ValueError(f"configs/large.py: model must be one of {', '.join(ARCHS)}, got {a.model!r}")
    if a.method not in METHODS:
        raise ValueError(f"configs/large.py: method must be one of {', '.join(METHODS)}, got "
                         f"{a.method!r}")
    if a.hardware not in HARDWARE:
        raise ValueError(f"configs/large.py: hardware must be one of {', '.join(HARDWARE)}, got "
                         f"{a.hardware!r}")
    hub, arch = ARCHS[a.model]
    (data, fsdp, tensor), _ = HARDWARE[a.hardware]
    c = defaults.get_config()
    c.model = hub
    c.model_arch = dict(arch)
    c.compute_dtype = "bfloat16"
    c.param_dtype = "float32" if a.method == "full" else "bfloat16"
    # the backend's fused attention: cuDNN on GPUs (1.25x on the 1B shape on an H200,
    # docs/train.md), Splash on TPUs (untested on one); `cotjax memory` counts the reference
    # path's attention block, an upper bound for these
    c.attention = "fused"
    c.data.template = "chat"
    c.data.seq_len = 1024
    c.data.batch_size = GLOBAL_ROWS
    c.data.num_epochs = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
    c.train.steps = -1
    c.train.lr = 1e-5 if a.method == "full" else 2e-4
    c.train.warmup_steps = 20
    c.train.weight_decay = 0.0
    c.train.remat = True
    c.train.loss_chunk = 256
    # rows per device per micro-batch: 4 on one GPU (8 micro-batches), else all at once
    c.train.microbatches = max(GLOBAL_ROWS // (data * fsdp) // 4, 1)
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_at_end = True
    if a.method != "full":
        c.lora.rank = 16
        c.lora.alpha = 32.0
        c.lora.quant = "nf4" if a.method == "qlora" else "none"
    return c
