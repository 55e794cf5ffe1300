"""The rules table and the mesh: a (2,2,2) mesh computes what one device computes."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cotjax import sharding as sh
from cotjax import load, train
from cotjax.loss import CoTLoss

from _train_utils import tiny_config, write_byte_tokenizer


def _mesh_cfg(data, fsdp, tensor):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_mesh_shape_fills_the_free_axis():
    assert sh.mesh_shape(_mesh_cfg(-1, 2, 1), 8) == (4, 2, 1)
    assert sh.mesh_shape(_mesh_cfg(2, 2, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 4 devices"):
        sh.mesh_shape(_mesh_cfg(2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one"):
        sh.mesh_shape(_mesh_cfg(-1, -1, 1), 8)


def test_optional_mesh_spans_every_device_or_is_none_on_one(monkeypatch):
    mesh = sh.optional_mesh(_mesh_cfg(-1, 2, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}  # conftest's 8 CPU devices
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert sh.optional_mesh(_mesh_cfg(-1, 2, 1)) is None


def test_rules_table_specs():
    mesh = sh.make_mesh(_mesh_cfg(2, 2, 2))
    assert sh.spec_for(("layers", "embed", "heads", "head_dim"), (2, 32, 4, 8), mesh) == \
        P(None, "fsdp", "tensor")
    assert sh.spec_for(("vocab", "embed"), (64, 32), mesh) == P("tensor", "fsdp")
    # a dimension the mesh axis does not divide is replicated (3 kv heads on tensor=2)
    assert sh.spec_for(("layers", "embed", "kv_heads", "head_dim"), (2, 32, 3, 8), mesh) == \
        P(None, "fsdp")
    assert sh.spec_for(("batch", "length"), (8, 16), mesh) == P(("data", "fsdp"))
    with pytest.raises(KeyError, match="no entry"):
        sh.spec_for(("bogus",), (4,), mesh)
    # size-1 mesh axes are dropped: a one-device mesh replicates everything
    one = sh.make_mesh(_mesh_cfg(1, 1, 1), jax.devices()[:1])
    assert sh.spec_for(("vocab", "embed"), (64, 32), one) == P()


def test_mesh_222_matches_one_device():
    """Loss and gradients on a (data=2, fsdp=2, tensor=2) mesh equal one device's:
    loss to rtol 1e-6, gradients to rtol 1e-4 / atol 1e-6 (float32, reduction order differs);
    with `train.target_logits_only` (logits at the loss positions only, gathered per row) too,
    the loss to rtol 1e-5."""
    import tempfile

    from transformers import AutoTokenizer

    tok_dir = write_byte_tokenizer(tempfile.mkdtemp() + "/bytes")
    config = tiny_config(tok_dir)
    config.model_arch.num_kv_heads = 2
    cfg = load._random_model_config(config)
    data = train.RunData(config)
    batch = next(data.train_iterator(AutoTokenizer.from_pretrained(tok_dir)))
    results = []
    for shape, targets_only in (((1, 1, 1), False), ((2, 2, 2), False), ((2, 2, 2), True)):
        mesh = sh.make_mesh(_mesh_cfg(*shape), jax.devices()[:int(np.prod(shape))])
        params = load.init_random_params(cfg, 0, mesh)
        trainer = train.Trainer(cfg, train.TrainSpec(steps=2, target_logits_only=targets_only),
                                mesh, 2)
        sums, grads = trainer.grads(params, batch)
        if shape == (2, 2, 2):
            assert grads["layers"]["w_up"].sharding.spec == P(None, "fsdp", "tensor")
            # 259 byte-level tokens do not split over tensor=2: vocab stays whole
            assert params["embed"].sharding.spec == P(None, "fsdp")
        results.append((CoTLoss().summarize(jax.device_get(sums)), jax.device_get(grads),
                        jax.device_get(params)))
    (s1, g1, p1), (s8, g8, p8), (st, gt, _) = results
    jax.tree.map(np.testing.assert_array_equal, p1, p8)  # same init, whatever the mesh
    np.testing.assert_allclose(s8["loss"], s1["loss"], rtol=1e-6)
    np.testing.assert_allclose(s8["answer_acc"], s1["answer_acc"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g8, g1)
    for k in s1:
        np.testing.assert_allclose(st[k], s1[k], rtol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), gt, g1)
