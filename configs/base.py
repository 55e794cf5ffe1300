"""Defaults shared by every config: `get_config()` returns an ml_collections ConfigDict.

Other configs start from this one and change a few keys; any key can be overridden on the command
line as `--config.section.key=value`.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # A preset (smollm2-135m-instruct, gemma3-270m), a .gguf file, a HF directory or a hub id.
    c.model = "smollm2-135m-instruct"
    c.param_dtype = "float32"
    c.compute_dtype = "float32"  # bfloat16 on accelerators

    c.data = ml_collections.ConfigDict()
    c.data.source = "gsm8k"  # gsm8k | aqua | jsonl | synthetic | hf | tfds
    c.data.path = "data/gsm8k/train.jsonl"
    c.data.validation_size = 500  # held out of the training file, deterministic
    c.data.template = "plain"  # plain | chat
    c.data.mode = "cot"  # cot | answer_only
    c.data.w_chain = 1.0
    c.data.w_answer = 1.0
    c.data.strip_calculator = True
    c.data.seq_len = 1024
    c.data.batch_size = 8  # global batch, rows of seq_len tokens
    c.data.overlong = "drop"  # drop | truncate
    c.data.on_bad_record = "error"  # error | skip
    c.data.shuffle = True
    c.data.num_epochs = 1
    c.data.max_examples = -1  # -1: all

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
