"""The trainer's config fields checked before anything is compiled, and the run's length
and learning-rate schedule, computed once (`schedule`) for the method and the loop."""
from typing import Callable, NamedTuple

import ml_collections

from mim_jax import data, optim
from mim_jax.models import vit


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int) -> None:
  """Errors a user can cause in the trainer's fields, raised before anything is compiled
  (the recipe's fields are checked by `schedule`, the model's by the model, a method's by
  the method when it is built)."""
  vit.check_model_config(config.model)
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % accum:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of "
                     f"config.grad_accum_steps={accum} (>= 1).")
  data.check_config(config)
  data.check_batch_size(config.batch_size, num_devices, process_count)
  profile = tuple(config.profile_steps)
  if profile and not (len(profile) == 2 and 1 <= profile[0] <= profile[1]):
    raise ValueError(f"config.profile_steps={profile} must be () or (first, last) with "
                     "1 <= first <= last, e.g. --config.profile_steps='(10, 12)'.")
  if (config.batch_size // accum) % num_devices:
    raise ValueError(f"Each micro-batch of config.batch_size / config.grad_accum_steps = "
                     f"{config.batch_size // accum} images must divide over {num_devices} "
                     f"devices; change config.batch_size or config.grad_accum_steps.")


def check_recipe(config: ml_collections.ConfigDict) -> None:
  """The fields a recipe must set (defaults.base_config leaves them None)."""
  missing = [f"config.{name}" for name, value in (
      ("batch_size", config.batch_size), ("optimizer.base_lr", config.optimizer.base_lr))
             if value is None]
  if config.num_train_steps < 0 and config.num_epochs is None:
    missing.append("config.num_epochs (or config.num_train_steps)")
  if missing:
    raise ValueError(f"{', '.join(missing)} not set: start from a config file in configs/ "
                     "(e.g. --config=configs/mae.py:vit_base) or set them.")


class Schedule(NamedTuple):
  """A run's length in optimizer steps and its learning rate: `lr(step)` rises from the
  warmup to `peak_lr` (base_lr scaled by the batch) and decays as config.optimizer says."""
  total_steps: int
  warmup_steps: int
  steps_per_epoch: int
  peak_lr: float
  lr: Callable


def schedule(config: ml_collections.ConfigDict) -> Schedule:
  """The `Schedule` of `config`: steps or epochs (of the train split) and the lr fields."""
  check_recipe(config)
  steps_per_epoch = max(data.num_examples(config, config.data.train_split) // config.batch_size,
                        1)
  total = optim.steps_from_epochs(config.num_train_steps, config.num_epochs, steps_per_epoch)
  warmup = optim.steps_from_epochs(config.warmup_steps, config.warmup_epochs, steps_per_epoch)
  peak_lr = optim.scaled_lr(config.optimizer.base_lr, config.optimizer.lr_scaling,
                            config.batch_size)
  lr = optim.lr_schedule_from_config(config, peak_lr, total, warmup, steps_per_epoch)
  return Schedule(total, warmup, steps_per_epoch, peak_lr, lr)
