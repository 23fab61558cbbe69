"""codevision-jax: train vision-language models that think with images through code, in JAX."""

from setuptools import find_packages, setup

# Pinned so that a fresh clone installs the exact stack the tests ran against.
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "grain==0.2.18",
  # data.source="tfds": prepared sets, read as ArrayRecord (data/tfds_source.py); no TensorFlow.
  "tensorflow-datasets==4.9.10",
  "array-record==0.8.6",
  "pyarrow==26.0.1",
  "transformers==5.23.0",
  # transformers renders chat templates with it: the tokenizer's own template is checked against
  # the chat format at start (processing/tokenizer.py), and exports carry a template.
  "jinja2==3.1.6",
  "safetensors==0.8.0",
  "numpy==2.4.6",
  "pillow==13.0.0",
  "opencv-python-headless==5.0.0.93",
  "ml-collections==1.1.0",
  "absl-py==2.5.1",
  "tensorboardX==2.6.5",
  "tensorboard==2.21.0",  # `tensorboard --logdir <workdir>/tensorboard` to view the runs.
  "psutil==7.2.2",
  # The executor service (executor/) and its client (codevision_jax/execution/client.py).
  "aiohttp==3.14.5",
  "pyseccomp==0.1.2",
  "ml-dtypes==0.6.0",
  "tqdm==4.70.1",
  "matplotlib==3.11.2",  # The eval report's plots (evals/report.py).
]

TEST_REQUIRES = [
  "pytest==9.2.0",
  "pytest-xdist==3.8.0",
  "pytest-timeout==2.4.0",
  "ruff==0.17.6",  # `make test` lints the tree first (pyproject.toml).
  # The reference implementation for parity tests only; the library never imports torch.
  # Exactly this version: a CPU build is available locally, other versions pull CUDA wheels.
  "torch==2.13.0",
  # PEFT: the LoRA adapter export is checked by loading it with peft onto the HF base (tests only).
  "peft==0.21.0",
]

setup(
  name="codevision-jax",
  version="0.1.0",
  description=__doc__,
  python_requires=">=3.11",
  # Only the library is installed: the entry points (launch/, evals/, executor/, configs/,
  # benchmarks/) run from the repository root (`python -m launch.sft ...`), so their generic
  # names never land in site-packages beside other projects'.
  packages=find_packages(include=["codevision_jax", "codevision_jax.*"]),
  install_requires=INSTALL_REQUIRES,
  extras_require={
    "test": TEST_REQUIRES,
    # Accelerators: `pip install -e ".[cuda12]"` (NVIDIA GPUs, CUDA 12 wheels included),
    # ".[cuda13]", or ".[tpu]" (Cloud TPU VMs). The same JAX version as the CPU pin.
    "cuda12": ["jax[cuda12]==0.10.2"],
    "cuda13": ["jax[cuda13]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
  },
)
