"""Helpers for the training tests: a byte-level tokenizer and tiny random-model configs.

Also a script: `python tests/_train_utils.py CONFIG_JSON WORKDIR` trains one run (used by the
kill-and-resume test as a subprocess; the multi-process test goes through the launcher instead).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def write_byte_tokenizer(path: str | Path) -> str:
    """A byte-level BPE tokenizer without merges (259 ids: <pad>, <s>, </s>, 256 bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if (path / "tokenizer.json").exists():
        return str(path)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(str(path))
    return str(path)


TINY_ARCH = dict(family="llama", vocab_size=259, d_model=32, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=8, mlp_dim=64, norm_eps=1e-5,
                 rope={"theta": 10000.0}, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0)


def tiny_config(tokenizer_dir: str, **train):
    """A config training a tiny random llama on the synthetic task with byte tokens."""
    from cotjax import defaults

    c = defaults.get_config()
    c.model = "random"
    c.tokenizer = tokenizer_dir
    c.model_arch = dict(TINY_ARCH)
    c.data.source = "synthetic"
    c.data.synthetic_n = 400
    c.data.synthetic_min_steps = 1
    c.data.synthetic_max_steps = 2
    c.data.validation_size = 32
    c.data.seq_len = 128
    c.data.batch_size = 8
    c.data.num_epochs = -1
    c.data.packing_bins = 16
    # Byte tokens make about a fifth of the synthetic problems longer than 128 tokens; they
    # are dropped (and counted), which these tiny runs accept.
    c.data.max_skipped_fraction = 0.3
    c.mesh.data = -1
    c.train.steps = 6
    c.train.lr = 3e-3
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.train.progress = False
    c.train.eval_batches = 2
    c.train.peak_flops = 1e11
    c.train.async_checkpoint = True
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


CONFIG_FILE = '''"""A test's config, read from {json_name}, for `cotjax ... --config=THIS_FILE`."""
import json
import pathlib

import ml_collections


def get_config():
    return ml_collections.ConfigDict(json.loads(pathlib.Path({json_path!r}).read_text()))
'''


def write_config_file(config, path: str | Path) -> Path:
    """A Python config file (`get_config()`) that returns `config`, read from a JSON file beside
    it, so the real CLI entry point (`cotjax train --config=PATH`) can run a test's config."""
    path = Path(path)
    json_path = path.with_suffix(".json")
    json_path.write_text(config.to_json())
    path.write_text(CONFIG_FILE.format(json_name=json_path.name, json_path=str(json_path)))
    return path


def main(argv):
    """CONFIG_JSON WORKDIR: train (resuming) under this process's env (JAX multi-process vars)."""
    import ml_collections

    from cotjax import train

    from cotjax import sharding

    sharding.maybe_initialize_distributed()
    config = ml_collections.ConfigDict(json.loads(Path(argv[1]).read_text()))
    result = train.train(config, argv[2])
    print("RESULT " + json.dumps({"step": result.step, "stopped": result.stopped_by_signal,
                                  "loss": result.final_metrics.get("loss"),
                                  "process": int(os.environ.get("COTJAX_PROCESS_ID", 0))}),
          flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv)
