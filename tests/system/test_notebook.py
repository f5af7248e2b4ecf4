"""notebooks/inspect_checkpoint.ipynb runs top to bottom, headless, on a tiny MAE run."""
import json
import os
import sys

import nbclient
import nbformat

from conftest import REPO, tiny_mae_config
from mim_jax import pretrain

NOTEBOOK = REPO / "notebooks" / "inspect_checkpoint.ipynb"
# configs/mae.py:vit_base,shrink (16 patches of 4 px, 64 eval images), 4 steps, checkpointed at
# the last, without image summaries (the notebook draws its own)
TINY = {"num_train_steps": 4, "checkpoint_every_steps": 4, "image_summary_every_steps": 0}


def this_python_kernel(root):
  """A kernelspec named 'mim_jax_test' under root/kernels that runs sys.executable."""
  spec_dir = root / "kernels" / "mim_jax_test"
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "pytest's Python", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  return "mim_jax_test"


def outputs_of(cell):
  text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
  images = sum("image/png" in o.get("data", {}) for o in cell.outputs)
  return text, images


def test_the_inspection_notebook_runs_on_a_tiny_mae_checkpoint(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  pretrain.run(tiny_mae_config(**TINY), str(workdir))
  monkeypatch.setenv("MIM_WORKDIR", str(workdir))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(  # this checkout's mim_jax
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  kernel = this_python_kernel(tmp_path / "jupyter")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
  client = nbclient.NotebookClient(notebook, kernel_name=kernel, timeout=300,
                                   startup_timeout=120,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError naming the cell if any cell fails

  code = [c for c in notebook.cells if c.cell_type == "code"]
  assert "parameters" in code[1].metadata.tags
  text = {i: outputs_of(c)[0] for i, c in enumerate(code)}
  images = {i: outputs_of(c)[1] for i, c in enumerate(code)}
  assert "mae at step 4" in text[2]
  assert "75% of 16 patches hidden" in text[3]  # MAE masks 12 of 16
  assert images[3] == images[4] == images[5] == images[6] == images[7] == 1
  assert "of the 5 nearest neighbours of 64 eval images" in text[6]
  assert "Logged scalars:" in text[7] and "mae_loss" in text[7]
  assert text[8].strip() == sys.executable  # the kernel is the Python running pytest
