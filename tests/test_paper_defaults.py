"""The training defaults are the paper's main run (issue 10): what trains, the data mix, which images are
excluded, and how ADE20K val is scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evf_sam.config  # noqa: F401  (registers the schemas)
from evf_sam.config import typed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_defaults_are_the_papers_main_run():
    from evf_sam.data.build import refer_sources

    cfg = _compose("data.root=/data")
    assert cfg.trainable.name == "enc_proj_prompt_mask"  # Tab. 4 last row: encoder + prompt encoder + decoder
    data = typed(cfg.data)
    assert [s.dataset for s in refer_sources(data)] == ["refcoco", "refcoco+", "refcocog"]  # "RC", no RefCLEF
    assert data.exclude_eval_images is False
    opted = typed(_compose("data.root=/data", "data.sources.refclef.rate=1.0", "data.exclude_eval_images=true").data)
    assert [s.dataset for s in refer_sources(opted)] == ["refcoco", "refcoco+", "refcocog", "refclef"]
    assert opted.exclude_eval_images is True
    sem = typed(_compose("data=refer_mix_semantic", "data.root=/data").data)
    # official utils/dataset.py ValDataset "ade": "[semantic] <class>", binary masks, no ignore region
    assert sem.val_semantic.prefix == "[semantic] " and sem.val_semantic.ignore_unlabeled is False


def _write_two_datasets(root: Path) -> None:
    """refcoco|unc: images 1, 2 train, image 3 val; refcocog|umd: image 2 val (a RefCOCO train image in
    another dataset's val split, as in the real RefCOCO family)."""
    from evf_sam.data.refer import write_refer

    img_dir = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True)
    images = []
    for i in (1, 2, 3):
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(img_dir / name)
        images.append({"id": i, "file_name": name, "height": 16, "width": 16})
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]}
            for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "thing"}]

    def ref(i, split):
        return {"ref_id": 100 + i, "ann_id": 10 + i, "image_id": i, "category_id": 1, "split": split,
                "file_name": "x.jpg", "sent_ids": [i], "sentences": [{"sent_id": i, "sent": f"thing {i}",
                                                                      "raw": f"thing {i}", "tokens": ["thing"]}]}

    write_refer(root, "refcoco", "unc", images, anns, cats, [ref(1, "train"), ref(2, "train"), ref(3, "val")])
    write_refer(root, "refcocog", "umd", images, anns, cats, [ref(2, "val")])


@pytest.mark.parametrize("exclude", [False, True])
def test_eval_image_exclusion_is_opt_in_and_counted(tmp_path, exclude):
    from evf_sam.data.train_dataset import EXCLUDE_SPLITS, ReferTrainDataset, Source

    _write_two_datasets(tmp_path)
    kw = dict(exclude_splits=EXCLUDE_SPLITS) if exclude else {}
    ds = ReferTrainDataset(tmp_path, [Source("refcoco", "refcoco", "unc", 1.0)], tokenizer=None, sam_size=16,
                           beit_size=16, max_text_len=8, **kw)
    images = sorted(k for k in ds.image_keys())
    assert len(images) == (1 if exclude else 2)
    assert ds.num_excluded == (1 if exclude else 0)
    if exclude:
        assert "excluded 1 training images" in ds.summary()
    else:
        assert "no training image excluded" in ds.summary() and "data.exclude_eval_images=true" in ds.summary()


def test_refclef_files_are_not_required_by_default(tmp_path):
    from evf_sam.data.build import refer_sources
    from evf_sam.data.train_dataset import ReferTrainDataset

    _write_two_datasets(tmp_path)
    data = typed(_compose(f"data.root={tmp_path}", "data.sources.refcoco_plus.rate=0",
                          "data.sources.refcocog.rate=0").data)
    ds = ReferTrainDataset(tmp_path, refer_sources(data), tokenizer=None, sam_size=16, beit_size=16, max_text_len=8)
    assert [s.source.dataset for s in ds.refer] == ["refcoco"]
    opted = typed(_compose(f"data.root={tmp_path}", "data.sources.refcoco_plus.rate=0",
                           "data.sources.refcocog.rate=0", "data.sources.refclef.rate=1").data)
    with pytest.raises(FileNotFoundError, match="refclef"):
        ReferTrainDataset(tmp_path, refer_sources(opted), tokenizer=None, sam_size=16, beit_size=16, max_text_len=8)


def test_full_size_model_without_weights_stops_unless_random_init_is_asked_for(tmp_path):
    from evf_sam.engine.build import build_trainer, check_pretrained_weights

    cfg = _compose("data=random", "model.tokenizer=/w/tok", f"run_dir={tmp_path / 'run'}", "logger=none")
    with pytest.raises(ValueError) as e:
        build_trainer(cfg)  # before any directory, data or model
    msg = str(e.value)
    assert "model.sam_checkpoint" in msg and "'vit_h'" in msg and "model.encoder_checkpoint" in msg
    assert "model.random_init=true" in msg and not (tmp_path / "run").exists()
    # one part given: only the other is named
    with pytest.raises(ValueError) as e:
        check_pretrained_weights(typed(_compose("model.tokenizer=/w/tok", "model.sam_checkpoint=/w/sam.pth").model))
    assert "model.encoder_checkpoint" in str(e.value) and "model.sam_checkpoint" not in str(e.value)
    check_pretrained_weights(typed(_compose("model.tokenizer=/w/tok", "model.random_init=true").model))  # opted in
    check_pretrained_weights(typed(_compose("model.tokenizer=/w/tok", "model.sam_checkpoint=/w/s.pth",
                                                 "model.encoder_checkpoint=/w/b.pth").model))
    check_pretrained_weights(typed(_compose("model=tiny").model))  # tiny test models are random by design
    with pytest.raises(ValueError, match="efficient_sam_s"):  # any full-size SAM family
        check_pretrained_weights(typed(_compose("model.tokenizer=/w/tok", "sam=efficient_sam_s",
                                                "model.encoder_checkpoint=/w/b.pth").model))
