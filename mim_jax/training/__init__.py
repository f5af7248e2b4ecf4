"""The generic trainer, one module per job (mim_jax/methods/ hold what is method-specific):

- config.py: the trainer's config fields checked, and the run's length and lr schedule;
- state.py: the train state, initialised (or only its shapes) into its shardings;
- train_step.py: one step: EMA targets, masks, loss and gradients (accumulated), the
  optimizer update, skipped when the loss or a gradient is not finite;
- loop.py: `train_and_evaluate`, the loop that runs the steps, evaluates, logs and saves;
- record.py: the run record: resume checks, config history, logged steps, input position;
- progress.py: step time, throughput and ETA.
"""
