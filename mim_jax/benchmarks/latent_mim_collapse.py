"""Representation collapse of Latent MIM target modes (the seed table's "Sim" column).

python -m mim_jax.benchmarks.latent_mim_collapse [--steps=300] \
    [--modes=joint,momentum] [--config=configs/latent_mim.py:cifar_collapse] \
    [--config.x=y ...] \
    [--results=docs/RESULTS.md]

Pretrains each `method.target_mode` in `--modes` for the same `--steps` on the config's
data (default: the CIFAR-10 subset in the first rung of the paper's ablation ladder: MSE
loss, mask 0.75, no gap, self-attention decoder, no projector, no regulariser), then
prints, on 256 held-out test images
with fixed masks, the mean pairwise cosine similarity of the target patch features
(sim_target: 1.0 = collapsed), of the predictions, and the latent loss. With --results,
they replace the 'latent_mim_collapse' section (--results_section) of that document, with
the command, machine and date (mim_jax/benchmarks/results.py).
"""
import tempfile

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from mim_jax import data, methods, pretrain
from mim_jax.benchmarks import results

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/latent_mim.py:cifar_collapse",
                                "Latent MIM config file.")
flags.DEFINE_integer("steps", 300, "Training steps per mode.")
flags.DEFINE_list("modes", ["joint", "momentum"], "config.method.target_mode values.")
results.define_flags("latent_mim_collapse")


def held_out_batch(config, num_images=256):
  """Normalised test images at the training image size (first `num_images`)."""
  eval_iter = data.create_eval_iterator(config, config.data.eval_split,
                                        global_batch_size=num_images)
  return {"image": jnp.asarray(next(eval_iter)["image"])}


def main(argv):
  del argv
  results.requested_section()  # a bad --results_section fails first
  logging.set_verbosity(logging.WARNING)  # no per-checkpoint INFO lines
  measured = {}
  for mode in FLAGS.modes:
    config = FLAGS.config.copy_and_resolve_references()
    config.method.target_mode = mode
    config.update(num_train_steps=FLAGS.steps, warmup_steps=FLAGS.steps // 10,
                  checkpoint_every_steps=FLAGS.steps, image_summary_every_steps=0)
    with tempfile.TemporaryDirectory() as workdir:
      state = pretrain.run(config, workdir)
    method = methods.create(config, total_steps=FLAGS.steps)
    batch = held_out_batch(config)
    masks = method.make_masks(jax.random.PRNGKey(0), batch)
    _, metrics = jax.jit(method.loss)(state.params, state.target_params, batch, masks, None,
                                      state.step)
    measured[mode] = {k: float(v) for k, v in metrics.items()}
  fields = ", ".join(f"{k}={v}" for k, v in FLAGS.config.method.items() if k != "target_mode")
  setting = f"{FLAGS.steps} steps of batch {FLAGS.config.batch_size}; method: {fields}"
  print(setting)
  for mode, r in measured.items():
    print(f"target_mode={mode}: sim_target={r['sim_target']:.3f} "
          f"sim_pred={r['sim_pred']:.3f} latent_loss={r['latent_loss']:.4f}")
  table = "\n".join(
      [f"{setting}; on 256 held-out images:", "", "| target_mode | sim_target | sim_pred | latent_loss |",
       "| --- | --- | --- | --- |"] +
      [f"| {mode} | {r['sim_target']:.3f} | {r['sim_pred']:.3f} | {r['latent_loss']:.4f} |"
       for mode, r in measured.items()])
  results.write_from_flags("mim_jax.benchmarks.latent_mim_collapse",
                           "Latent MIM collapse: naive joint vs momentum target", table)


if __name__ == "__main__":
  app.run(main)
