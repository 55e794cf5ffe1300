"""TPU attention for training: the Pallas Splash kernel over the decoder's packed rows.

`attention='fused'` on a TPU runs this instead of XLA's attention (on GPUs it is cuDNN's, see
`model._fused_implementation`; on CPUs XLA's). Splash skips the key blocks a query block cannot
see: above the causal diagonal, outside a sliding window, and (from the segment ids) across
packed examples. Padding (segment 0) attends only to padding, so real tokens never see it, as in
the reference path.

Pallas TPU kernels are not partitioned by GSPMD, so under a multi-device mesh the kernel runs in
`shard_map`: batch over the rules table's batch axes, kv heads over its tensor axis. The mesh is
the one `jax.set_mesh` made current (the Trainer does, for fused attention). Tests run the same
kernel in Pallas's interpret mode on the CPU (`INTERPRET`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as sk,
    splash_attention_mask as sm,
)
from jax.sharding import PartitionSpec as P

from cotjax import sharding

INTERPRET = False  # tests: run the kernel in Pallas's interpret mode on any backend
LANES = 128  # the TPU's lane width: Splash's blocks are multiples of it
BLOCK = 512  # Splash's default tile, used when the row length allows


def usable(seq_len: int) -> bool:
    """Splash here: on a TPU (or interpreted), for rows a whole number of lanes long."""
    return (INTERPRET or jax.default_backend() == "tpu") and seq_len % LANES == 0


@functools.lru_cache(maxsize=None)
def _kernel(seq_len: int, heads_per_kv: int, window: int, interpret: bool):
    """The kernel for one row length, query heads per kv head and window (0: none)."""
    shape = (seq_len, seq_len)
    # Our sliding window keeps keys whose position is within `window - 1` before the query's.
    mask = sm.LocalMask(shape, (window - 1, 0), offset=0) if window else sm.CausalMask(shape)
    b = _block_size(seq_len)
    blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                           block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    # Built eagerly even when first asked for inside a trace: the kernel holds the mask's block
    # tables as arrays, and this cache outlives the trace.
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa(sm.MultiHeadMask([mask] * heads_per_kv), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def _block_size(seq_len: int) -> int:
    """The largest multiple of LANES up to BLOCK that divides the row length."""
    return max(b for b in range(LANES, BLOCK + 1, LANES) if seq_len % b == 0)


def _rows(q_BKGTH, k_BKTH, v_BKTH, seg_BT, window: int):
    """Every (row, kv head) through the kernel: MQA within each kv head's query group."""
    kernel = _kernel(q_BKGTH.shape[3], q_BKGTH.shape[2], window, INTERPRET)

    def one(q_GTH, k_TH, v_TH, seg_T):
        return kernel(q_GTH, k_TH, v_TH, segment_ids=sk.SegmentIds(q=seg_T, kv=seg_T))

    return jax.vmap(jax.vmap(one, in_axes=(0, 0, 0, None)))(q_BKGTH, k_BKTH, v_BKTH, seg_BT)


def under_mesh(fn, mesh):
    """`fn` (a jitted program) called with `mesh` current, so that tracing it finds the mesh
    for Splash's shard_map (`__wrapped__` is the program itself)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, scale: float, window: int = 0):
    """Causal attention within segments (and `window` positions back when > 0): [B, T, N, H]."""
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    q_BKGTH = (q_BTNH * jnp.asarray(scale, q_BTNH.dtype)).reshape(B, T, K, N // K, H)
    q_BKGTH = q_BKGTH.transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    seg_BT = segment_ids_BT.astype(jnp.int32)
    rows = functools.partial(_rows, window=window)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        heads = sharding.RULES["kv_heads"]
        if K % sharding.axis_size(mesh, heads):
            heads = None  # fewer kv heads than the tensor axis: each shard takes all of them
        spec = P(sharding.RULES["batch"], heads)
        rows = jax.shard_map(rows, mesh=mesh,
                             in_specs=(spec, spec, spec, P(sharding.RULES["batch"])),
                             out_specs=spec, check_vma=False)
    o_BKGTH = rows(q_BKGTH, k_BKTH, v_BKTH, seg_BT)
    return o_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
