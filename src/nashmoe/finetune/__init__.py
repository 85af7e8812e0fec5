"""Fine-tuning upcycled pretrained encoders on sentence classification (``nashmoe finetune-cls``).

The NAMEx paper's GLUE experiment (ICLR 2026) at this machine's scale: a pretrained dense
encoder (all-MiniLM-L6-v2 by default) is upcycled to a MoE model of each method
(:func:`nashmoe.hf.upcycle`, sequence routing), given a classification head and fine-tuned.

- :mod:`nashmoe.finetune.data`: tasks (``sst2``) read from GLUE-layout TSV files.
- :mod:`nashmoe.finetune.model`: :class:`SentenceClassifier`, :func:`build_classifier`.
- :mod:`nashmoe.finetune.experiment`: :class:`FinetuneSettings`, :func:`run_one`.
- :mod:`nashmoe.finetune.report`: summaries, paired differences, table and plot.

Needs the ``hf`` extra (transformers) and, for the default encoder, the ``text`` extra.
"""

from nashmoe.finetune.data import TASKS, TextSplit, load_task
from nashmoe.finetune.experiment import FinetuneSettings, run_one
from nashmoe.finetune.model import SentenceClassifier, build_classifier, encoder_path

__all__ = [
    "TASKS",
    "FinetuneSettings",
    "SentenceClassifier",
    "TextSplit",
    "build_classifier",
    "encoder_path",
    "load_task",
    "run_one",
]
