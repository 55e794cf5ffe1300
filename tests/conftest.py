"""Test set-up: 8 fake CPU devices for sharding tests (must precede the first jax import), and
one XLA compilation cache for the whole session.

Tests marked `one_device` (real checkpoints that shard nothing) run faster on one device: 8 fake
devices split their batches 8 ways on 2 cores (the beam search test: 136 s with 8, 66 s with 1).
XLA fixes the device count per process, so `make test` runs them in a second pytest process with
COTJAX_TEST_DEVICES=1; a plain `pytest` runs everything on 8 devices."""

import os
import shutil
import tempfile

import pytest

DEVICES = int(os.environ.get("COTJAX_TEST_DEVICES", "8"))
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _fresh_dir(var: str, prefix: str) -> str | None:
    """A new temporary dir in $var unless the caller set it; the dir is removed at the end."""
    if var in os.environ:
        return None
    os.environ[var] = tempfile.mkdtemp(prefix=prefix)
    return os.environ[var]


# A persistent compilation cache for this session, inherited by the processes tests launch
# (training CLIs, kill-and-resume runs, benchmarks): the same small programs are compiled in many
# tests and processes, and on 2 cores compiling is most of a tiny run's time. Fresh per session,
# so a run never reads another's entries.
_CACHE = _fresh_dir("JAX_COMPILATION_CACHE_DIR", "cotjax-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# cotjax's own cache (the assembled Gemma GGUF, GGUF conversions) is fresh per session too, so no
# entry left by an older version can stand in for a conversion under test.
_OWN_CACHE = _fresh_dir("COTJAX_CACHE", "cotjax-cache-")


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config, items):
    """Fewer devices than 8 only for `one_device` tests: the others' sharded meshes need 8."""
    if DEVICES < 8:
        wide = [i.nodeid for i in items if i.get_closest_marker("one_device") is None]
        if wide:
            raise pytest.UsageError(f"COTJAX_TEST_DEVICES={DEVICES} runs only tests marked "
                                    f"one_device (add -m one_device); {wide[0]} needs 8 devices")


def pytest_sessionfinish(session, exitstatus):
    for cache in (_CACHE, _OWN_CACHE):
        if cache:
            shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished training run of a tiny random llama on the synthetic task (seconds on CPU):
    a dict with its `workdir`, its `config_file` (a `get_config()` file) and `config`."""
    from _train_utils import tiny_config, write_byte_tokenizer, write_config_file
    from cotjax import train

    root = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config(write_byte_tokenizer(root / "bytes"), steps=6, eval_every=2,
                         log_every=1)
    config.mesh.fsdp = 2  # parameters sharded, so views of their shardings have something to show
    config.eval.max_new_tokens = 24  # a random model never stops by itself: keep decoding short
    config.eval.batch_size = 4
    train.train(config, root / "run")
    return {"workdir": root / "run", "config_file": write_config_file(config, root / "tiny.py"),
            "config": config}
