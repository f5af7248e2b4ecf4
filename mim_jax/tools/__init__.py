"""Programs that compare, measure and plan, apart from the library: nothing in mim_jax outside
this package imports it.

Programs (`python -m mim_jax.tools.NAME`, usage in each module's docstring):
  compare         pretrain config variants for one budget and probe them along the way
  aot             compile the train step for a TPU slice on this machine (the pod planner)
  calibration     the planner's estimate against MaxText's measured v5e MFU
  train_step      train-step throughput and MFU on the local devices
  profile_step    where the CPU train step's time goes, by operation class
  input_pipeline  input-pipeline throughput on JPEG files, per CPU core
Shared pieces:
  compiled_step   a config's train step compiled on random images: FLOPs, timing, tables
  step_flags      the flags of the step programs: --config and the speed options
  tpu_model       TPU chips and the step-time model over the compiler's estimates
  torch_mae_step  the official facebookresearch/mae PyTorch step, run beside ours
  results_doc     the marked sections of docs/RESULTS.md that the programs write

Each program defines its flags in `define_flags()` at the top of its module and calls it
under `if __name__ == "__main__":` before `app.run(main)`: importing a program (the tests
do) defines no flag, so none clashes with mim_jax.main's or another program's. A flag set
that several programs take is a function of the shared module they call from their
`define_flags` (step_flags.define_config_flags, torch_mae_step.define_flags,
results_doc.define_flags).
"""
