"""Vision Transformer pieces shared by every method.

Layout follows facebookresearch/mae (`models_mae.py`, `util/pos_embed.py`) and timm's
`VisionTransformer`: pre-LN blocks, fused qkv projection with bias, exact GELU,
LayerNorm eps 1e-6, fixed 2-D sin-cos position embeddings (or BEiT's shared relative
position bias, as SimMIM's ViT-B), optional LayerScale, cls token, final LayerNorm.
Parameters are float32; `dtype` is the compute dtype.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

LN_EPS = 1e-6
xavier_uniform = nn.initializers.xavier_uniform()
token_init = nn.initializers.normal(stddev=0.02)
POS_EMBEDDINGS = ("sincos", "shared_rel_bias")
# Attention implementations: 'xla' (einsum-softmax-einsum through XLA, any backend and
# dtype: `attention_weights`, then the weighted sum of values; logits and softmax in
# float32), 'xla_compute_logits' (the same with the logits in the compute dtype and the
# softmax in float32, as the official code's fp16 autocast: in bfloat16 faster where a
# chip holds many images, slower where it holds few; docs/RESULTS.md) or 'cudnn'
# (jax.nn.dot_product_attention's cuDNN flash attention: GPU, bfloat16).
ATTENTION_IMPLS = ("xla", "xla_compute_logits", "cudnn")
# Activation rematerialisation of each transformer block (jax.checkpoint_policies): 'none'
# keeps every activation, 'full' recomputes the whole block in the backward pass, the
# others save only matmul outputs (without / with batch dimensions in the contraction).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy_name(remat) -> str:
  """A REMAT_POLICIES key from a policy name or a bool (True = 'full', False = 'none')."""
  if isinstance(remat, (bool, np.bool_)):
    return "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat policy config.model.remat={remat!r}; choose one of "
                     f"{sorted(REMAT_POLICIES)} (or a bool).")
  return remat


def check_model_config(model) -> None:
  """Errors a user can cause in `config.model`'s encoder and speed fields, raised before
  anything is compiled (a method checks its decoder fields when it is built)."""
  if model.width % model.num_heads or model.width % 4:
    raise ValueError(f"config.model.width={model.width} must be divisible by 4 (sin-cos "
                     f"position embedding) and by config.model.num_heads={model.num_heads}.")
  if model.dtype == "float16":
    raise ValueError("config.model.dtype='float16' trains without loss scaling here, so "
                     "small gradients underflow to zero: use 'bfloat16' (same speed on "
                     "TPUs and Ampere or newer GPUs, float32's range) or 'float32'.")
  if model.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype={model.dtype!r}: choose 'float32' or 'bfloat16' "
                     "(the compute dtype; params stay float32).")
  remat_policy_name(model.remat)
  if model.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown config.model.attention_impl={model.attention_impl!r}; choose "
                     f"one of {ATTENTION_IMPLS}.")
  if model.attention_impl == "cudnn" and (jax.default_backend() != "gpu"
                                          or model.dtype == "float32"):
    raise ValueError(f"config.model.attention_impl='cudnn' needs a GPU and "
                     f"config.model.dtype 'bfloat16' (have {jax.default_backend()}, "
                     f"{model.dtype!r}); use 'xla'.")
  if not isinstance(model.scan_layers, bool):
    raise ValueError(f"config.model.scan_layers={model.scan_layers!r} must be True or False.")


def maybe_remat(module_cls, remat, static_argnums=()):
  """`module_cls` under `nn.remat` with the named policy; `module_cls` itself for 'none'."""
  name = remat_policy_name(remat)
  if name == "none":
    return module_cls
  return nn.remat(module_cls, static_argnums=static_argnums, policy=REMAT_POLICIES[name])


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, N, p*p*C], row-major patch grid, each patch as (p, p, C)."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c)  # [B, h, p, w, p, C]
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, C]
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid_hw: Sequence[int]) -> jax.Array:
  """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  b = patches.shape[0]
  gh, gw = grid_hw
  p = patch_size
  c = patches.shape[-1] // (p * p)
  x = patches.reshape(b, gh, gw, p, p, c)  # [B, h, w, p, p, C]
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h, p, w, p, C]
  return x.reshape(b, gh * p, gw * p, c)


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """[M] positions -> [M, D] as [sin | cos] with omega = 1 / 10000^(2i/D)."""
  assert embed_dim % 2 == 0, embed_dim
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega  # [D/2]
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)  # [M, D/2]
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]


def sincos_2d(embed_dim: int, grid_hw: Sequence[int]) -> np.ndarray:
  """Fixed 2-D sin-cos embedding [h*w, D] in the MAE layout.

  As in mae/util/pos_embed.py: the first D/2 channels encode the column (x) index and
  the second D/2 the row (y) index, each as [sin | cos]; tokens are row-major.
  """
  assert embed_dim % 4 == 0, f"sin-cos position embedding needs width % 4 == 0, got {embed_dim}"
  gh, gw = grid_hw
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")  # [h, w]
  emb_x = sincos_1d(embed_dim // 2, cols)
  emb_y = sincos_1d(embed_dim // 2, rows)
  return np.concatenate([emb_x, emb_y], axis=1).astype(np.float32)  # [h*w, D]


def gelu(x):
  """Exact GELU, x·Φ(x) = x/2·(1 + erf(x/√2)) (torch nn.GELU(), the official models').
  The same function as nn.gelu(approximate=False), which XLA expands through erfc: the
  erf form is cheaper on the CPU (3% of an MAE ViT-B step)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=xavier_uniform, name=name)
    x = dense(self.hidden_dim, "fc1")(x)
    x = gelu(x)
    return dense(d, "fc2")(x)


def attention_weights(q, k, bias=None, float32_logits=True):
  """softmax(q·kᵀ/√Dh + bias) [B, H, N, M] from q [B, N, H, Dh], k [B, M, H, Dh], softmax
  in float32 whatever the compute dtype. The logits are float32 too, or with
  `float32_logits=False` in the compute dtype with q scaled first (timm `Attention`:
  `q = q * self.scale`), as the official code's fp16 autocast computes them (a
  half-precision matmul, a float32 softmax): in bfloat16 half the bytes of the
  [B, H, N, M] tensors."""
  scale = np.float32(q.shape[-1] ** -0.5)
  if float32_logits:
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32) * scale
  else:
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k)
  if bias is not None:
    logits = logits + bias
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def qkv_projection(x, kernel, bias, num_heads: int):
  """x [B, N, D] @ kernel [D, 3D] + bias [3D] -> (q, k, v) each [B, N, H, Dh], as three
  einsums on the kernel's q, k and v slices. Its VJP is nn.Dense's on the cotangents
  concatenated to [B, N, 3D]: one kernel gradient [D, 3D], which FSDP reduce-scatters along
  the kernel's own column shards. (Through the slices, each q, k and v gradient is summed
  whole over every chip, since the column shards cut across the slices: a 124 MB
  all-reduce per MAE ViT-L step on v5e-256. The concatenation costs layout copies, which
  make the step 3% slower at 32 and 64 images per v5e chip and faster at 16 and 128;
  docs/RESULTS.md.)"""
  d = x.shape[-1]
  kernel = kernel.reshape(d, 3, num_heads, d // num_heads)
  bias = bias.reshape(3, num_heads, d // num_heads)
  return tuple(jnp.einsum("bnd,dhk->bnhk", x, kernel[:, i]) + bias[i] for i in range(3))


def _qkv_projection_fwd(x, kernel, bias, num_heads):
  return qkv_projection(x, kernel, bias, num_heads), (x, kernel)


def _qkv_projection_bwd(num_heads, residuals, cotangents):
  del num_heads
  x, kernel = residuals
  b, n, d = x.shape
  dy = jnp.concatenate([c.reshape(b, n, d) for c in cotangents], axis=-1)  # [B, N, 3D]
  # the bias gradient per slice, from the [B, N, H, Dh] cotangents: one reduction of the
  # concatenated dy is an unfused reduce (1.6 ms of MAE ViT-L's step on v5e-256)
  dbias = jnp.concatenate([c.sum((0, 1)).reshape(-1) for c in cotangents])
  return (jnp.einsum("bne,de->bnd", dy, kernel), jnp.einsum("bnd,bne->de", x, dy), dbias)


qkv_projection.defvjp(_qkv_projection_fwd, _qkv_projection_bwd)


class FusedQKV(nn.Module):
  """timm's fused 'qkv' Linear (kernel [D, 3D], bias [3D]: nn.Dense's parameters, names and
  initialisation) applied by `qkv_projection` straight onto heads, -> (q, k, v) each
  [B, N, H, Dh]. The same projection as Dense followed by a reshape to heads, without the
  reshape (with Dh below the TPU's 128 lanes a layout copy per block) and without a
  stacked [3, ...] output (whose gradient is assembled from three padded copies). The
  compiler's estimate of the MAE ViT-L step on v5e-256: 30.2 ms instead of 34.7 with Dense
  and the reshape (docs/RESULTS.md)."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    kernel = self.param("kernel", xavier_uniform, (d, 3 * d))
    bias = self.param("bias", nn.initializers.zeros, (3 * d,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return qkv_projection(x, kernel, bias, self.num_heads)


class Attention(nn.Module):
  """Multi-head attention with queries from `x` [B, N, D].

  Self-attention (fused 'qkv' projection) when `context` is None; cross-attention to
  `context` [B, M, D] ('q' and fused 'kv') when `values` is None; else keys from `context`
  and values from `values` through separate 'q', 'k', 'v' projections (CAE's regressor,
  Atten4Vis/CAE models/modeling_cae_helper.py `CrossAttention`). `bias`, broadcastable
  to [B, H, N, M], is added to the attention logits (relative position bias).
  `implementation` (ATTENTION_IMPLS): 'xla' and 'xla_compute_logits' compute the weights
  explicitly (`attention_weights`, float32 logits or not); 'cudnn' runs
  the fused kernel, except when the 'intermediates' collection is mutable
  (`apply(..., mutable=['intermediates'])`): then the weights are always computed
  explicitly and sown as 'attention_weights' [B, H, N, M].
  (timm `Attention`; explicit rather than jax.nn.dot_product_attention's 'xla' path, whose
  grouped-query reshapes cost the CPU 7% of an MAE ViT-B step.)
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x, context=None, values=None, bias=None):
    b, n, d = x.shape
    h = self.num_heads
    dense = lambda n_out, name: nn.Dense(n_out, dtype=self.dtype, kernel_init=xavier_uniform,
                                         name=name)
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], h, d // h)  # [B, L, H, Dh]
    if context is None:
      q, k, v = FusedQKV(h, dtype=self.dtype, name="qkv")(x)  # each [B, N, H, Dh]
    elif values is None:
      m = context.shape[1]
      q = heads(dense(d, "q")(x))  # [B, N, H, Dh]
      kv = dense(2 * d, "kv")(context).reshape(b, m, 2, h, d // h)  # [B, M, 2, H, Dh]
      k, v = kv[:, :, 0], kv[:, :, 1]  # [B, M, H, Dh]
    else:
      q = heads(dense(d, "q")(x))  # [B, N, H, Dh]
      k, v = heads(dense(d, "k")(context)), heads(dense(d, "v")(values))  # [B, M, H, Dh]
    if bias is not None:
      bias = bias.astype(q.dtype)
    if self.implementation != "cudnn" or self.is_mutable_collection("intermediates"):
      weights = attention_weights(q, k, bias, self.implementation != "xla_compute_logits")
      self.sow("intermediates", "attention_weights", weights)
      out = jnp.einsum("bhnm,bmhd->bnhd", weights, v)  # [B, N, H, Dh]
    else:
      out = jax.nn.dot_product_attention(q, k, v, bias=bias,
                                         implementation=self.implementation)  # [B, N, H, Dh]
    return dense(d, "proj")(out.reshape(b, n, d))


class DropPath(nn.Module):
  """Stochastic depth per sample (timm `drop_path`); needs the 'dropout' rng when active.
  `rate` given to the call (possibly traced, as in a scanned stack) overrides the field."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool, rate=None):
    rate = self.rate if rate is None else rate
    if deterministic or (isinstance(rate, float) and rate == 0.0):
      return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(kept, x / keep, 0.0).astype(x.dtype)


def layer_scale(module: nn.Module, name: str, y, init_value: Optional[float]):
  """γ·y with a learned per-channel γ initialised to `init_value` (LayerScale, CaiT);
  y itself when `init_value` is None."""
  if init_value is None:
    return y
  gamma = module.param(name, nn.initializers.constant(init_value), (y.shape[-1],))
  return y * gamma.astype(y.dtype)


class Block(nn.Module):
  """Pre-LN transformer block: x + γ1·attn(LN(x)); x + γ2·mlp(LN(x)).

  γ (LayerScale, CaiT) is used only when `layer_scale_init` is set (SimMIM/CAE use 0.1).
  `bias` is added to the attention logits; `drop_rate`, when given, overrides `drop_path`.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  layer_scale_init: Optional[float] = None
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias=None, drop_rate=None):
    rate = self.drop_path if drop_rate is None else drop_rate
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.num_heads, dtype=self.dtype, implementation=self.attention_impl,
                  name="attn")(y, bias=bias)
    y = layer_scale(self, "gamma_1", y, self.layer_scale_init)
    x = x + DropPath(self.drop_path)(y, deterministic, rate)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + DropPath(self.drop_path)(layer_scale(self, "gamma_2", y, self.layer_scale_init),
                                        deterministic, rate)


class ScanStep(Block):
  """A Block as the body of `nn.scan`: carry x (or (x, kept) with `keep_layer`), scanned
  inputs (layer index, drop-path rate or None), broadcast attention bias. With
  `keep_layer` k the carry also holds the output of layer k (0-based)."""
  deterministic: bool = True
  keep_layer: Optional[int] = None

  def __call__(self, carry, xs, bias):  # pylint: disable=arguments-renamed
    layer, rate = xs
    x = carry if self.keep_layer is None else carry[0]
    x = super().__call__(x, self.deterministic, bias, rate)
    if self.keep_layer is None:
      return x, None
    return (x, jnp.where(layer == self.keep_layer, x, carry[1])), None


class ScannedBlocks(nn.Module):
  """`depth` Blocks as one `nn.scan` over layers: the same function as `block_stack`'s
  unrolled list, compiled once; params stacked on a leading [depth] axis under
  'layers' (`stack_block_params` converts). Sown intermediates get the same leading
  axis. Called like a Block; `block` k (1-based) returns block k's output (all layers
  still run)."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = None
  dtype: Dtype = jnp.float32
  remat: Any = "none"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias=None, block: Optional[int] = None):
    keep = None if block is None else block - 1
    step = nn.scan(maybe_remat(ScanStep, self.remat),
                   variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True},
                   in_axes=(0, nn.broadcast), length=self.depth)
    rates = (jnp.linspace(0.0, self.drop_path_rate, self.depth, dtype=jnp.float32)
             if self.drop_path_rate > 0.0 else None)
    out, _ = step(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                  layer_scale_init=self.layer_scale_init, dtype=self.dtype,
                  attention_impl=self.attention_impl, deterministic=deterministic,
                  keep_layer=keep, name="layers")(
                      x if keep is None else (x, x), (jnp.arange(self.depth), rates), bias)
    return out if keep is None else out[1]


def block_stack(depth: int, num_heads: int, mlp_ratio: float, dtype: Dtype, remat: Any,
                drop_path_rate: float = 0.0, layer_scale_init: Optional[float] = None,
                name_prefix: str = "blocks", scan: bool = False,
                attention_impl: str = "xla") -> list:
  """`depth` Blocks with linearly increasing drop-path rate (timm/MAE convention), each
  under the `remat` policy (REMAT_POLICIES or a bool), named `{name_prefix}_{i}`; with
  `scan`, one `ScannedBlocks` named `name_prefix` in a one-element list."""
  if scan:
    return [ScannedBlocks(depth, num_heads, mlp_ratio, drop_path_rate, layer_scale_init, dtype,
                          remat, attention_impl, name=name_prefix)]
  block_cls: Callable = maybe_remat(Block, remat, static_argnums=(2,))
  rates = np.linspace(0.0, drop_path_rate, depth)
  return [
      block_cls(num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path=float(rates[i]),
                layer_scale_init=layer_scale_init, dtype=dtype, attention_impl=attention_impl,
                name=f"{name_prefix}_{i}")
      for i in range(depth)
  ]


def stack_block_params(params: dict, depth: int, name_prefix: str = "blocks") -> dict:
  """Unrolled layout ({prefix}_0 ... {prefix}_{depth-1}) -> scanned layout
  ({prefix}: {'layers': leaves stacked on a leading [depth] axis}); other keys kept."""
  out = {k: v for k, v in params.items()
         if k not in {f"{name_prefix}_{i}" for i in range(depth)}}
  layers = [params[f"{name_prefix}_{i}"] for i in range(depth)]
  out[name_prefix] = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return out


def unstack_block_params(params: dict, depth: int, name_prefix: str = "blocks") -> dict:
  """Inverse of `stack_block_params`."""
  out = {k: v for k, v in params.items() if k != name_prefix}
  for i in range(depth):
    out[f"{name_prefix}_{i}"] = jax.tree.map(lambda x, i=i: x[i],
                                             params[name_prefix]["layers"])
  return out


def unrolled(encoder: "ViTEncoder", params: dict) -> Tuple["ViTEncoder", dict]:
  """`encoder` rebuilt unrolled ('blocks_0', ...) with XLA attention and no remat, and its
  params in that layout (unstacked when `encoder.scan_layers`): it runs anywhere, each
  block can sow its attention weights, and the params export block by block."""
  if encoder.scan_layers:
    params = unstack_block_params(params, encoder.depth)
  return encoder.clone(scan_layers=False, remat="none", attention_impl="xla"), params


def relative_position_index(grid_hw: Sequence[int]) -> np.ndarray:
  """[1 + N, 1 + N] (query, key) indices into a (2h−1)(2w−1) + 3 entry table: token pairs
  by (Δrow, Δcol), then cls→token, token→cls, cls→cls (SimMIM
  models/vision_transformer.py `RelativePositionBias`, from BEiT)."""
  gh, gw = grid_hw
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  coords = np.stack([rows.reshape(-1), cols.reshape(-1)])  # [2, N]
  rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N] query − key
  size = (2 * gh - 1) * (2 * gw - 1) + 3
  index = np.empty((gh * gw + 1,) * 2, np.int32)  # [1 + N, 1 + N]
  index[1:, 1:] = (rel[0] + gh - 1) * (2 * gw - 1) + rel[1] + gw - 1
  index[0, :] = size - 3
  index[:, 0] = size - 2
  index[0, 0] = size - 1
  return index


class RelativePositionBias(nn.Module):
  """Relative position bias shared by all blocks: a zero-initialised table with one entry
  per head for each relative offset, looked up as [H, 1 + N, 1 + N]."""
  grid_hw: Sequence[int]
  num_heads: int

  @nn.compact
  def __call__(self):
    gh, gw = self.grid_hw
    size = (2 * gh - 1) * (2 * gw - 1) + 3
    table = self.param("relative_position_bias_table", nn.initializers.zeros,
                       (size, self.num_heads))  # [T, H]
    return table[relative_position_index(self.grid_hw)].transpose(2, 0, 1)  # [H, 1+N, 1+N]


class ViTEncoder(nn.Module):
  """ViT encoder over a (possibly masked) patch sequence.

  Call with `visible_idx` [B, K] to encode only those patches (MAE, CAE, Latent MIM), or
  with `token_mask` [B, N] (1 = hidden) to replace hidden patch embeddings by a learned
  mask token and encode all of them (SimMIM). Position embeddings are added before tokens
  are selected, and the cls token (with zero position embedding) is prepended after, as
  in mae/models_mae.py `forward_encoder`.
  `pos_embedding`: 'sincos' adds fixed 2-D sin-cos embeddings to the patch tokens;
  'shared_rel_bias' adds none and instead biases every block's attention logits with one
  learned `RelativePositionBias` (the published SimMIM ViT-B, USE_SHARED_RPB).
  Returns [B, 1 + K, D] (cls first) after the final LayerNorm, or, with `block=k`, the
  output of the k-th block (1-based) without the final LayerNorm.
  Speed options: `remat` (a REMAT_POLICIES name or bool), `scan_layers` (one
  `ScannedBlocks` named 'blocks' instead of 'blocks_0'...: `stack_block_params`),
  `attention_impl` (ATTENTION_IMPLS), `dtype` (compute; params stay float32).
  """
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = None
  use_mask_token: bool = False
  pos_embedding: str = "sincos"
  remat: Any = False
  dtype: Dtype = jnp.float32
  scan_layers: bool = False
  attention_impl: str = "xla"

  @property
  def grid_hw(self):
    return (self.image_size // self.patch_size, self.image_size // self.patch_size)

  @property
  def num_patches(self):
    return self.grid_hw[0] * self.grid_hw[1]

  def setup(self):
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype, kernel_init=xavier_uniform,
                                name="patch_embed")
    self.cls_token = self.param("cls_token", token_init, (1, 1, self.width))
    if self.use_mask_token:
      self.mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    if self.pos_embedding not in POS_EMBEDDINGS:
      raise ValueError(f"Unknown pos_embedding={self.pos_embedding!r}; choose one of "
                       f"{POS_EMBEDDINGS}.")
    if self.pos_embedding == "sincos":
      self.pos_embed = sincos_2d(self.width, self.grid_hw)  # [N, D], fixed
    else:
      self.rel_pos_bias = RelativePositionBias(self.grid_hw, self.num_heads,
                                               name="rel_pos_bias")
    self.blocks = block_stack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                              self.remat, self.drop_path_rate, self.layer_scale_init,
                              scan=self.scan_layers, attention_impl=self.attention_impl)
    self.norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")

  def embed(self, images, token_mask=None):
    """[B, H, W, C] -> patch embeddings + position embeddings [B, N, D]."""
    x = self.patch_embed(patchify(images, self.patch_size).astype(self.dtype))  # [B, N, D]
    if token_mask is not None:
      w = token_mask[..., None].astype(x.dtype)  # [B, N, 1]
      x = x * (1.0 - w) + self.mask_token.astype(x.dtype) * w
    if self.pos_embedding == "sincos":
      x = x + self.pos_embed.astype(x.dtype)
    return x

  def prepend_cls(self, x):
    cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1)  # [B, 1 + K, D]

  def attention_bias(self, visible_idx=None):
    """Relative position bias [1, H, 1 + N, 1 + N], or [B, H, 1 + K, 1 + K] for the cls
    token and the patches at `visible_idx` [B, K]; None with sin-cos embeddings."""
    if self.pos_embedding != "shared_rel_bias":
      return None
    bias = self.rel_pos_bias()  # [H, 1 + N, 1 + N]
    if visible_idx is None:
      return bias[None]
    seq = jnp.concatenate([jnp.zeros_like(visible_idx[:, :1]), visible_idx + 1], axis=1)
    bias = bias[:, seq[:, :, None], seq[:, None, :]]  # [H, B, 1 + K, 1 + K]
    return bias.transpose(1, 0, 2, 3)  # [B, H, 1 + K, 1 + K]

  def check_block(self, block: Optional[int]):
    """Raises unless `block` is None or a 1-based block index in [1, depth]."""
    if block is not None and not 1 <= block <= self.depth:
      raise ValueError(f"block={block} must be None (last block + final norm) or in "
                       f"[1, {self.depth}] for a depth-{self.depth} encoder.")

  def transform(self, x, deterministic: bool = True, visible_idx=None,
                block: Optional[int] = None):
    """Blocks then final LayerNorm over an already embedded token sequence (cls first;
    `visible_idx` [B, K] names the patches when not all N are present).

    `block` k (1-based) returns the output of block k instead, without the final norm
    (intermediate-layer probing, as in the MAE/CAE layer-wise analyses)."""
    self.check_block(block)
    bias = self.attention_bias(visible_idx)
    if self.scan_layers:
      x = self.blocks[0](x, deterministic, bias, block)
    else:
      for blk in self.blocks[:block]:
        x = blk(x, deterministic, bias)
    return self.norm(x) if block is None else x

  def __call__(self, images, visible_idx=None, token_mask=None, deterministic: bool = True,
               block: Optional[int] = None):
    if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
      raise ValueError(f"ViTEncoder built for {self.image_size}px images got {images.shape}")
    x = self.embed(images, token_mask)  # [B, N, D]
    if visible_idx is not None:
      x = jnp.take_along_axis(x, visible_idx[..., None], axis=1)  # [B, K, D]
    return self.transform(self.prepend_cls(x), deterministic, visible_idx,
                          block)  # [B, 1 + K, D]
