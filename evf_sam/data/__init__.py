"""Data: readers, training sources and datasets, evaluation datasets, the records between them.

    refer.py              REFER reader / writer (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF)
    semantic.py           ADE20K / Mapillary Vistas readers (paper Tab. 6)
    batch.py              ImageKey, TrainSample (one image, k expressions), Batch, collate_samples
    train_dataset.py      training sources (REFER, semantic) -> TrainSample, the mix, StepBatchSampler
    random_data.py        data.kind=random: random samples for training and validation
    eval_dataset.py       evaluation items per image: REFER and semantic splits
    build.py              the datasets of a training run from the `data` config group
    synthetic.py          synthetic coloured-shape REFER data (quickstart, tests)
    synthetic_semantic.py tiny ADE20K / Mapillary trees (tests)
    check.py              `python -m evf_sam.data.check ROOT`

Import-light on purpose: submodules are imported where they are used, e.g.
``from evf_sam.data.refer import ReferDataset``,
``from evf_sam.data.eval_dataset import ReferEvalDataset, build_eval_dataset``,
``from evf_sam.data.batch import Batch``.
"""
