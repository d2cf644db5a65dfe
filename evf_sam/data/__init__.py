"""Data: REFER reader / writer, synthetic REFER data, evaluation and training datasets, batches.

Import-light on purpose: submodules are imported where they are used, e.g.
``from evf_sam.data.refer import ReferDataset``,
``from evf_sam.data.synthetic import make_synthetic_refer``,
``from evf_sam.data.eval_dataset import ReferEvalDataset, build_eval_dataset``,
``from evf_sam.data.batch import Batch``.
"""
