import numpy as np
import pytest

from evf_sam.data.refer import ReferDataset
from evf_sam.data.synthetic import make_synthetic_refer
from evf_sam.engine.baselines import trivial_baselines


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_refer(root, seed=3, num_train=4, num_val=5, num_test=4)
    return root


def test_union_baseline_matches_hand_computation(syn_root):
    refer = ReferDataset(syn_root, "refcoco", "unc")
    inter = union = 0
    n = 0
    for r in refer.split_refs("val"):
        anns = [a for a, ann in refer.annotations.items() if ann["image_id"] == r["image_id"]]
        every = np.zeros_like(refer.annotation_mask(anns[0]), dtype=bool)
        for a in anns:
            every |= refer.annotation_mask(a).astype(bool)
        gt = refer.annotation_mask(r["ann_id"]).astype(bool)
        k = len(r["sentences"])
        inter += k * int((every & gt).sum())
        union += k * int((every | gt).sum())
        n += k
    got = trivial_baselines(syn_root, "refcoco", "unc", "val")
    assert got["union"]["n_expressions"] == n == got["empty"]["n_expressions"]
    assert got["union"]["ciou"] == pytest.approx(inter / union)
    # several objects per synthetic image: the union is far from every single referent
    assert 0.1 < got["union"]["ciou"] < 0.6
    assert got["empty"]["ciou"] == 0.0 and got["empty"]["giou"] == 0.0
