"""A larger HF checkpoint on TPU/GPU: Qwen2.5-1.5B-Instruct, FSDP over all devices, bf16 compute
with fp32 master weights, remat.

    cotjax train --config=configs/gsm8k_hf_large.py --workdir=gs://.../qwen15b \\
        --config.model=/path/to/Qwen2.5-1.5B-Instruct   # or the hub id when online
"""

from cotjax import defaults


def get_config(arg=None):
    c = defaults.get_config()
    c.model = "Qwen/Qwen2.5-1.5B-Instruct"
    c.param_dtype = "float32"
    c.compute_dtype = "bfloat16"
    c.data.template = "chat"
    c.data.seq_len = 1024
    c.data.batch_size = 64
    c.data.num_epochs = 3
    c.mesh.data = 1
    c.mesh.fsdp = -1  # params and optimizer state sharded over every device
    c.mesh.tensor = 1
    c.train.steps = -1
    c.train.lr = 1e-5
    c.train.warmup_steps = 30
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.01
    c.train.remat = True
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.eval_at_end = True
    return c
