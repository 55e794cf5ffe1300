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
    c.data.num_epochs = 1  # -1: repeat forever (step-based training)
    c.data.max_examples = -1  # -1: all
    # Where records come from besides a local file (see cotjax/records.py).
    c.data.format = "fields"  # gsm8k | aqua | fields: record layout for jsonl, hf and tfds sources
    c.data.fields = ml_collections.ConfigDict(dict(
        question="question", chain="chain", answer="answer", options="options", id="id"))
    # e.g. --config.data.source=tfds --config.data.format=gsm8k on a TPU VM
    c.data.hf_name = "openai/gsm8k"
    c.data.hf_config = "main"
    c.data.hf_split = "train"
    c.data.tfds_name = "gsm8k"
    c.data.tfds_split = "train"
    c.data.tfds_data_dir = ""
    c.data.synthetic_n = 2000
    c.data.synthetic_min_steps = 2
    c.data.synthetic_max_steps = 6
    c.data.synthetic_seed = 0
    # The validation slice has its own seed so changing `seed` never moves it.
    c.data.validation_seed = 20240
    c.data.fewshot = 0  # exemplars from the train split prepended to evaluation prompts
    c.data.fewshot_seed = 0
    c.data.packer = "first_fit"  # first_fit | best_fit (grain packing transforms)
    c.data.packing_bins = 256  # rows packed at a time: more bins, less padding

    # A HF tokenizer directory; empty: the model's own tokenizer.
    c.tokenizer = ""
    # With model="random": ModelConfig fields of a randomly initialised decoder (tests, benchmarks).
    c.model_arch = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.steps = -1  # optimizer steps; -1: as many as data.num_epochs gives
    c.train.lr = 1e-5
    c.train.warmup_steps = 0
    c.train.schedule = "cosine"  # cosine | linear | constant
    c.train.end_lr_fraction = 0.1  # final lr as a fraction of lr
    c.train.weight_decay = 0.0  # AdamW; never on norms and biases
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.eps = 1e-8
    c.train.grad_clip = 1.0  # global norm; <= 0: off
    c.train.microbatches = 1  # gradient accumulation: the global batch in this many pieces
    c.train.remat = False  # recompute each layer's activations in the backward pass
    c.train.on_nonfinite = "stop"  # stop | skip (skip the update and count it)
    c.train.log_every = 10
    c.train.eval_every = 0  # validation loss every N steps; <= 0: only at the end
    c.train.eval_batches = -1  # -1: the whole validation split
    c.train.checkpoint_every = 0  # <= 0: only at the end (and on SIGTERM/SIGINT)
    c.train.keep = 2  # last K checkpoints
    c.train.keep_best = 1  # plus the best by validation loss
    c.train.async_checkpoint = True
    c.train.peak_flops = 0.0  # FLOP/s of the whole job for MFU; 0: measured (CPU) or looked up
    c.train.progress = True
    c.train.eval_at_end = False  # run cotjax.evaluate.run_eval on the final checkpoint

    # `cotjax eval` (cotjax/evaluate.py: run_eval). --data=validation means data's held-out slice.
    c.eval = ml_collections.ConfigDict()
    c.eval.task = "gsm8k"  # gsm8k | aqua (--task overrides)
    c.eval.prompting = "finetuned"  # finetuned (no exemplars) | zero_shot_cot | few_shot_cot
    c.eval.fewshot = 8  # exemplars (from data's train split, data.fewshot_seed) for few_shot_cot
    c.eval.cot_cue = "Let's think step by step."  # appended to the prompt for zero_shot_cot
    c.eval.stop = ("\nQuestion:",)  # stop strings (besides EOS); the text is cut before them
    c.eval.max_new_tokens = 256
    c.eval.batch_size = 16  # rows decoded together (rounded up to the data-parallel devices)
    c.eval.max_examples = -1  # -1: all; else the first N questions of the file
    c.eval.num_samples = 1  # > 1: self-consistency, n sampled chains and a majority vote (maj@n)
    c.eval.temperature = 0.7  # sampled chains only; the greedy pass is always run
    c.eval.top_k = 0  # 0: off
    c.eval.top_p = 1.0  # 1.0: off
    c.eval.seed = 0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
