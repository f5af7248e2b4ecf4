"""Input pipelines: synthetic, npz, image-folder and tfds sources through tf.data.

  num_examples(config, split) -> int
  num_classes(config) -> int
  create_train_iterator(config, *, global_batch_size, start_step=0, num_views=1,
                        process_index=None, process_count=None)
  create_eval_iterator(config, split, *, global_batch_size, process_index=None,
                       process_count=None)
  check_batch_size(global_batch_size, num_devices, process_count, field='config.batch_size')
  check_config(config): ValueError naming a config.data field the pipeline cannot use
  check_split(config, split): ValueError naming the field when the split's data cannot be read
  default_data_config()

Iterators yield dicts of NumPy arrays holding this process's share of the global batch.
Batches are a pure function of (config, process_index, process_count); see pipeline.py
for how training resumes exactly and config.py for the fields read.
"""
from mim_jax.data.config import default_data_config
from mim_jax.data.pipeline import (check_batch_size, check_config, create_eval_iterator,
                                   create_train_iterator)
from mim_jax.data.sources import check_split, num_classes, num_examples

__all__ = ["check_batch_size", "check_config", "check_split", "create_eval_iterator",
           "create_train_iterator", "default_data_config", "num_classes", "num_examples"]
