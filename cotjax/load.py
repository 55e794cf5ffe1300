"""Everything that loads: dtypes, tokenizers, base or random models, abstract parameters, and
"a checkpoint step or the base model" of a run.

train, eval, sample, export and the notebooks load through here, so none of them imports another
to get a model. Parameters are placed by the logical-axis rules of `cotjax.sharding` as they are
created: random ones are initialised under jit straight into their shardings (nanodo style), so
no full copy ever sits on one device.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from flax import nnx

from cotjax import checkpoint as ckpt_lib
from cotjax import lora as lora_lib
from cotjax import model as model_lib
from cotjax import paths
from cotjax import sharding as sharding_lib
from cotjax import weights


def resolve_dtype(name: str) -> str:
    """'auto': bfloat16 on accelerators, float32 on CPU."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def load_tokenizer(config):
    """The tokenizer of a config: `config.tokenizer` (a HF tokenizer directory) if set, else the
    model's own."""
    tok = config.get("tokenizer", "")
    if tok:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tok)
    return weights.load_tokenizer(config.model)


def _random_model_config(config) -> model_lib.ModelConfig:
    arch = config.get("model_arch")
    if not arch:
        raise ValueError("config.model='random' needs config.model_arch (ModelConfig fields)")
    arch = arch.to_dict() if hasattr(arch, "to_dict") else dict(arch)
    arch.setdefault("rope", {"theta": 10000.0})
    arch.setdefault("norm_eps", 1e-5)
    return model_lib.ModelConfig.from_dict(arch)


def dtype_overrides(config, remat: bool | None = None) -> dict:
    """ModelConfig fields a run config sets: its dtypes and attention path (and remat when
    training)."""
    out = dict(param_dtype=resolve_dtype(config.param_dtype),
               compute_dtype=resolve_dtype(config.compute_dtype),
               attention=config.get("attention", "reference"))
    if remat is not None:
        out["remat"] = bool(remat)
    return out


def abstract_params(cfg_or_module):
    """(params ShapeDtypeStructs, logical axes) pure dicts of a decoder: of a ModelConfig, or
    of an abstract NNX module (`nnx.eval_shape`; a decoder with another head, say)."""
    module = (cfg_or_module if isinstance(cfg_or_module, nnx.Module)
              else model_lib.abstract(cfg_or_module))
    state = nnx.state(module)
    shapes = nnx.to_pure_dict(state)
    axes = nnx.to_pure_dict(jax.tree.map(lambda v: v.logical_axes, state,
                                         is_leaf=lambda v: isinstance(v, nnx.Variable)))
    return shapes, axes


def placed_abstract_params(cfg, mesh=None):
    """The abstract params with their shardings attached (by the rules table on `mesh`; one
    device without one): what a checkpoint restore needs."""
    shapes, axes = abstract_params(cfg)
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, shapes)
    else:
        shardings = sharding_lib.param_shardings(shapes, axes, mesh)
    return placed(shapes, shardings)


def placed(shapes, shardings):
    """ShapeDtypeStructs with a sharding each (a tree of shapes, a matching tree of shardings)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def init_random_params(cfg, seed: int, mesh=None):
    """Random params, initialised under jit straight into their shardings."""
    shapes, axes = abstract_params(cfg)
    init = lambda: nnx.to_pure_dict(nnx.state(model_lib.create(cfg, seed)))  # noqa: E731
    if mesh is None:
        return jax.jit(init)()
    return jax.jit(init, out_shardings=sharding_lib.param_shardings(shapes, axes, mesh))()


def load_base_model(config, mesh=None, remat: bool | None = None, head: str = "lm"):
    """(Decoder, ModelConfig) a run starts from, each parameter placed by the rules table:
    `config.model` ('random' with `config.model_arch`, a preset, a GGUF file, a HF directory).
    head='reward': the same trunk with a zero-initialised reward head (a PRM or ORM to train).
    `config.lora.rank` > 0: the base (quantised if `lora.quant` says so) with fresh adapters."""
    overrides = {**dtype_overrides(config, remat), "head": head}
    spec = lora_lib.LoraSpec.from_config(config.get("lora"))
    if config.model == "random":
        cfg = _random_model_config(config).replace(**overrides)
        if spec is None:
            params = init_random_params(cfg, int(config.seed), mesh)
            return nnx.merge(nnx.graphdef(model_lib.abstract(cfg)), params), cfg
        params = weights.model_params(model_lib.create(cfg, int(config.seed)))
    else:
        hf, tensors = weights.read_checkpoint(config.model)
        cfg = model_lib.ModelConfig.from_hf(hf, **overrides)
        params = weights.hf_to_params(tensors, cfg, source=config.model)
        del tensors
        if head == "reward":  # p = 0.5 everywhere before training
            params.update(reward_head=np.zeros(cfg.d_model, np.float32),
                          reward_bias=np.zeros(1, np.float32))
    if spec is not None:
        params = lora_lib.adapt_base(params, spec, int(config.seed))
        cfg = cfg.replace(lora=spec)
    return weights.model_from_params(cfg, params, _shardings(mesh)), cfg


def split_base_model(config, mesh=None, remat: bool | None = None, head: str = "lm"):
    """(ModelConfig, trained, frozen) parameter dicts of the model a run starts from: with LoRA
    the adapters (and a reward head) against the frozen base; else all trained, none frozen."""
    model, cfg = load_base_model(config, mesh, remat=remat, head=head)
    params = nnx.to_pure_dict(nnx.state(model))
    del model
    return (cfg, *lora_lib.split(params, cfg.lora))


def parse_step(step) -> int | str | None:
    """A checkpoint step as given on a command line: None/''/'latest' -> None (the latest),
    'base' (the model the run started from), or a non-negative number."""
    if step in (None, "", "latest"):
        return None
    if step == "base" or isinstance(step, int):
        return step
    if str(step).isdigit():
        return int(step)
    raise ValueError(f"--step must be 'latest', 'base' or a number, got {step!r}")


def load_run_model(workdir, step=None, mesh=None):
    """(Decoder, ModelConfig, tokenizer, config) of a training run.

    step: None or 'latest' (the latest checkpoint), a number, or 'base' (the pretrained model
    the run started from, with the run's dtypes). `mesh`: shard the params by the rules table
    (default: one device).
    """
    step = parse_step(step)
    config, model_cfg = ckpt_lib.read_run_config(workdir)
    tokenizer = load_tokenizer(config)
    if step == "base":
        model, model_cfg = load_base_model(config, mesh)
        return model, model_cfg, tokenizer, config
    if model_cfg is None:
        raise FileNotFoundError(f"{paths.path(workdir) / 'model_config.json'} is missing")
    frozen = None
    abstract = placed_abstract_params(model_cfg, mesh)
    if model_cfg.lora is not None:  # the checkpoint holds the adapters; the base comes anew
        _, _, frozen = split_base_model(config, mesh, head=model_cfg.head)
        check_base(workdir, frozen)
        abstract, _ = lora_lib.split(abstract, model_cfg.lora)
    params, step = ckpt_lib.restore_params(workdir, step, abstract)
    model = nnx.merge(nnx.graphdef(model_lib.abstract(model_cfg)), lora_lib.join(frozen, params))
    logging.info("loaded %s step %d", workdir, step)
    return model, model_cfg, tokenizer, config


BASE_FILE = "adapter_base.json"


def write_base(workdir, frozen, config) -> None:
    """Record the frozen base of a LoRA run (its source and sha256) beside its config."""
    import json

    record = {"model": str(config.model), "sha256": lora_lib.fingerprint(frozen)}
    if jax.process_index() == 0:
        paths.write_text(paths.path(workdir) / BASE_FILE, json.dumps(record, indent=2))


def check_base(workdir, frozen) -> None:
    """A clear error when a LoRA run's adapters would go on another base than they were
    trained on (other weights, dtype or quantisation)."""
    import json

    file = paths.path(workdir) / BASE_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: cannot tell which base the adapters of "
                                f"{workdir} belong to")
    record = json.loads(file.read_text())
    now = lora_lib.fingerprint(frozen)
    if now != record["sha256"]:
        raise ValueError(f"the base model of {workdir} has changed: its adapters were trained "
                         f"on {record['model']} with sha256 {record['sha256'][:16]}..., the "
                         f"config's base now has {now[:16]}... (other weights, dtype or "
                         "quantisation): use the same base or another --workdir")


def merge_adapters(model, mesh=None):
    """(Decoder, ModelConfig) without adapters: a LoRA model's base dequantised and its adapters
    merged in (faster to decode); other models as they are."""
    if model.cfg.lora is None:
        return model, model.cfg
    params, cfg = weights.plain_params(model)
    return weights.model_from_params(cfg, params, _shardings(mesh)), cfg


def _shardings(mesh):
    """(logical axes, shape) -> sharding on `mesh` by the rules table (None without a mesh)."""
    return sharding_lib.logical_sharding(mesh) if mesh is not None else None


_HEAD_USE = {"lm": "a policy (a run trained with train.objective=cot)",
             "reward": "a reward model (a run trained with train.objective=prm or orm)"}


def require_head(cfg, head: str, source: str, use: str) -> None:
    """A clear error when a checkpoint of the wrong kind is given (a PRM where a policy
    decodes, a policy where a PRM scores)."""
    if cfg.head != head:
        raise ValueError(f"{source} is {_HEAD_USE[cfg.head]}; {use} needs {_HEAD_USE[head]}")


def load_for_eval(config, workdir: str | None = None, step=None, mesh=None,
                  use: str = "decoding"):
    """(model, ModelConfig, tokenizer, description): the checkpoint of `workdir` at `step` when
    a workdir is given, else the config's base model. It must be a policy (`use` names what
    needs one in the error otherwise)."""
    if workdir:
        step = parse_step(step)
        if step is None:  # name the step that answers, not "latest"
            step = ckpt_lib.latest_step(workdir)
        _, run_cfg = ckpt_lib.read_run_config(workdir)
        if run_cfg is not None:  # before minutes of restoring
            require_head(run_cfg, "lm", str(workdir), use)
        model, cfg, tokenizer, _ = load_run_model(workdir, step, mesh=mesh)
        model, cfg = merge_adapters(model, mesh)
        return model, cfg, tokenizer, f"{workdir} step {step}"
    model, cfg = load_base_model(config, mesh)
    return model, cfg, load_tokenizer(config), f"{config.model} (base)"
