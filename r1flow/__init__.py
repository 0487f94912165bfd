"""r1flow: the DeepSeek-R1 training recipe (arXiv 2501.12948) as a library.

This package holds everything that does the work (configs, rewards, GRPO math, trainers,
generation, storage, tracking) and never imports Prefect: the orchestration layers
(`tasks/`, `flows/`) sit on top of it.
"""

__version__ = "0.1.0"
