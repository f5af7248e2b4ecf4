"""mim_jax: masked image modeling pretraining in JAX/Flax."""
from setuptools import find_packages, setup

# Versions that are known to work together (see README). tensorboard and
# importlib_resources are needed by tensorflow / tensorflow-datasets at run time
# but are not declared by them.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "etils[epath]==1.15.0",  # workdir paths (local or gs://), as Orbax uses them
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "ml_collections==1.1.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "importlib_resources==7.1.0",
    "numpy>=1.26",
    "safetensors==0.8.0",
    "pillow",
]

setup(
    name="mim_jax",
    version="0.1.0",
    description="Masked image modeling pretraining (MAE, SimMIM, CAE, Latent MIM, PCAE, "
    "Multi-View MAE) in JAX/Flax",
    packages=find_packages(include=["mim_jax", "mim_jax.*"]),
    python_requires=">=3.11",  # jax 0.10.2 and flax 0.12.8 need Python 3.11 or newer
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "nbclient==0.11.0",
                 "nbformat==5.11.1", "ipykernel==7.4.0", "matplotlib==3.11.2"],
        "notebook": ["matplotlib==3.11.2"],  # notebooks/inspect_checkpoint.ipynb
        # Accelerators: the same jax with its CUDA 12 plugin, or with libtpu.
        "cuda12": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
)
