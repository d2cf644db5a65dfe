"""The paper's ablation axes: encoder × fusion × feature adapters, trainable-module globs, experiment configs."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch

from evf_sam.models import encoders
from evf_sam.models.encoders import build_prompt_encoder, check_combination, load_encoder_tokenizer
from evf_sam.models.encoders import tokenize_for_encoder
from evf_sam.models.features import FUSION_FEATURES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
N, T = 3, 6


def _tiny_beit3_depth() -> int:
    from evf_sam.models.beit3 import BEIT3_CONFIGS

    return BEIT3_CONFIGS["beit3_tiny"].depth


def _inputs(adapter, n: int = N, t: int = T, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab_hi = 50  # every tiny vocabulary is larger than this
    ids = torch.randint(3, vocab_hi, (n, t), generator=g)
    pad = torch.zeros(n, t, dtype=torch.bool)
    pad[0, t - 2:] = True  # one padded expression
    size = adapter.image_size
    image = torch.randn(n, 3, size, size, generator=g)
    return ids, pad, image


def _grid():
    """Every valid (encoder, fusion, feature) point at tiny size."""
    points = []
    for enc, fusions in [("beit3_tiny", ("text", "late", "early", "early_k")), ("clip_tiny", ("text", "late")),
                         ("vilt_tiny", ("text", "late", "early"))]:
        for fusion in fusions:
            for feature in FUSION_FEATURES[fusion]:
                points.append((enc, fusion, feature))
    return points


def _build(enc, fusion, feature=None, **kw):
    if fusion == "early_k" and "fused_layers" not in kw:
        kw["fused_layers"] = 1
    return build_prompt_encoder(enc, fusion=fusion, feature=feature, **kw)


@pytest.mark.parametrize("enc,fusion,feature", _grid())
def test_every_axis_value_forward_backward(enc, fusion, feature):
    adapter = _build(enc, fusion, feature)
    ids, pad, image = _inputs(adapter)
    image.requires_grad_(True)
    out = adapter(text_ids=ids, text_padding_mask=pad, image=image)
    assert out.shape == (N, adapter.feature_dim)
    assert adapter.feature_dim == (2 if feature == "concat" else 1) * adapter.width
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in adapter.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    uses_image = fusion != "text"
    assert (image.grad is not None and image.grad.abs().sum() > 0) == uses_image


@pytest.mark.parametrize("enc", ["beit3_tiny", "clip_tiny", "vilt_tiny"])
def test_feature_default_follows_fusion(enc):
    assert _build(enc, "text").feature == "text_cls"
    assert _build(enc, "late").feature == "concat"
    if enc != "clip_tiny":
        assert _build(enc, "early").feature == "image_cls"


@pytest.mark.parametrize("enc", ["beit3_tiny", "clip_tiny", "vilt_tiny"])
def test_late_fusion_encodes_modalities_separately(enc):
    adapter = _build(enc, "late").eval()
    d = adapter.width
    ids, pad, image = _inputs(adapter)
    ids2, _, image2 = _inputs(adapter, seed=1)
    with torch.no_grad():
        torch.manual_seed(0)
        base = adapter(text_ids=ids, text_padding_mask=pad, image=image)
        torch.manual_seed(0)
        new_text = adapter(text_ids=ids2, text_padding_mask=pad, image=image)
        torch.manual_seed(0)
        new_image = adapter(text_ids=ids, text_padding_mask=pad, image=image2)
    # concat = text [CLS] ⊕ image [CLS]
    torch.testing.assert_close(new_text[:, d:], base[:, d:], rtol=0, atol=1e-6)  # image half: text-blind
    assert not torch.allclose(new_text[:, :d], base[:, :d])
    torch.testing.assert_close(new_image[:, :d], base[:, :d], rtol=0, atol=1e-6)  # text half: image-blind
    assert not torch.allclose(new_image[:, d:], base[:, d:])


@pytest.mark.parametrize("enc", ["beit3_tiny", "vilt_tiny"])
def test_early_fusion_image_cls_sees_the_text(enc):
    adapter = _build(enc, "early").eval()
    ids, pad, image = _inputs(adapter)
    ids2, _, _ = _inputs(adapter, seed=1)
    with torch.no_grad():
        torch.manual_seed(0)
        a = adapter(text_ids=ids, text_padding_mask=pad, image=image)
        torch.manual_seed(0)
        b = adapter(text_ids=ids2, text_padding_mask=pad, image=image)
    assert not torch.allclose(a, b)


def test_early_k_with_k_equal_depth_is_early_and_smaller_k_differs():
    depth = _tiny_beit3_depth()
    early = _build("beit3_tiny", "early").eval()
    full = _build("beit3_tiny", "early_k", fused_layers=depth).eval()
    part = _build("beit3_tiny", "early_k", fused_layers=1).eval()
    full.load_state_dict(early.state_dict())
    part.load_state_dict(early.state_dict())
    ids, pad, image = _inputs(early)
    with torch.no_grad():
        e = early(text_ids=ids, text_padding_mask=pad, image=image)
        f = full(text_ids=ids, text_padding_mask=pad, image=image)
        p = part(text_ids=ids, text_padding_mask=pad, image=image)
    torch.testing.assert_close(f, e)
    assert not torch.allclose(p, e, atol=1e-4)


def test_beit3_adapter_keeps_torchscale_parameter_names():
    from evf_sam.models.beit3 import BEiT3, build_beit3

    adapter = _build("beit3_tiny", "early")
    assert isinstance(adapter, BEiT3)
    assert list(adapter.state_dict()) == list(build_beit3("beit3_tiny").state_dict())


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(encoder="clip_tiny", fusion="early"), ["fusion='early'", "clip_tiny", "text, late"]),
        (dict(encoder="clip_tiny", fusion="early_k", fused_layers=1), ["fusion='early_k'", "clip_tiny"]),
        (dict(encoder="vilt_tiny", fusion="early_k", fused_layers=1), ["fusion='early_k'", "vilt_tiny",
                                                                       "text, late, early"]),
        (dict(encoder="beit3_tiny", fusion="text", feature="image_cls"), ["feature='image_cls'", "fusion='text'",
                                                                          "text_cls"]),
        (dict(encoder="beit3_tiny", fusion="text", feature="concat"), ["feature='concat'", "fusion='text'"]),
        (dict(encoder="beit3_tiny", fusion="late", feature="image_cls"), ["feature='image_cls'", "fusion='late'",
                                                                          "concat"]),
        (dict(encoder="clip_tiny", fusion="text", feature="image_avg"), ["feature='image_avg'", "fusion='text'"]),
        (dict(encoder="beit3_tiny", fusion="early", fused_layers=1), ["fused_layers=1", "fusion='early'"]),
        (dict(encoder="beit3_tiny", fusion="early_k"), ["early_k", "fused_layers"]),
        (dict(encoder="beit3_tiny", fusion="early_k", fused_layers=99), ["fused_layers=99", "beit3_tiny"]),
        (dict(encoder="clip_tiny", fusion="text", fused_layers=1), ["fused_layers=1", "fusion='text'"]),
        (dict(encoder="beit3_tiny", fusion="middle"), ["middle", "text, late, early, early_k"]),
        (dict(encoder="beit3_tiny", feature="max_pool"), ["max_pool", "image_cls"]),
        (dict(encoder="gpt"), ["gpt", "beit3_large"]),
    ],
)
def test_invalid_combinations_raise_naming_the_clash(kwargs, words):
    with pytest.raises(ValueError) as err:
        build_prompt_encoder(**kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_check_combination_is_usable_without_building():
    assert check_combination("clip_large", "late") == "concat"
    assert check_combination("beit3_large", "early_k", "image_avg", fused_layers=12, depth=24) == "image_avg"
    with pytest.raises(ValueError, match="clip_huge"):
        check_combination("clip_huge", "early")


def test_vilt_early_is_viltmodel_forward():
    adapter = _build("vilt_tiny", "early", "text_cls").eval()
    ids, pad, image = _inputs(adapter)
    with torch.no_grad():
        torch.manual_seed(0)
        ours = adapter(text_ids=ids, text_padding_mask=pad, image=image)
        torch.manual_seed(0)
        ref = adapter.model(input_ids=ids, attention_mask=(~pad).long(), pixel_values=image).last_hidden_state
    torch.testing.assert_close(ours, ref[:, 0])


def test_clip_and_vilt_load_from_a_local_pretrained_dir(tmp_path):
    from transformers import CLIPModel

    src = _build("clip_tiny", "late")
    tiny = CLIPModel(__import__("transformers").CLIPConfig(**encoders.CLIP_PRESETS["clip_tiny"]))
    tiny.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "crop_size": {"height": 32}}))
    loaded = build_prompt_encoder("clip_tiny", fusion="late", pretrained=tmp_path / "clip").eval()
    assert loaded.image_mean == (0.1, 0.2, 0.3) and loaded.feature_dim == src.feature_dim
    ids, pad, image = _inputs(loaded)
    with torch.no_grad():
        text = tiny.text_projection(tiny.text_model(input_ids=ids, attention_mask=(~pad).long()).pooler_output)
        out = loaded(text_ids=ids, text_padding_mask=pad, image=image)
    torch.testing.assert_close(out[:, : loaded.width], text)
    with pytest.raises(ValueError, match="overrides"):
        build_prompt_encoder("clip_tiny", fusion="late", pretrained=tmp_path / "clip", overrides={"projection_dim": 8})

    vilt = _build("vilt_tiny", "early")
    vilt.model.save_pretrained(tmp_path / "vilt")
    again = build_prompt_encoder("vilt_tiny", fusion="early", pretrained=tmp_path / "vilt")
    assert list(vilt.state_dict()) == list(again.state_dict())
    for (k, a), (k2, b) in zip(vilt.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_clip_text_mode_keeps_only_the_text_tower():
    names = {n.split(".")[0] for n, _ in _build("clip_tiny", "text").named_parameters()}
    assert names == {"text_model", "text_projection"}


def test_encoder_tokenizers(tmp_path):
    from transformers import BertTokenizer, CLIPTokenizer

    # tiny CLIP byte-level BPE
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    clip_dir = tmp_path / "clip_tok"
    clip_dir.mkdir()
    (clip_dir / "vocab.json").write_text(json.dumps(vocab))
    (clip_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt")).save_pretrained(clip_dir)
    tok = load_encoder_tokenizer("clip_large", clip_dir)
    ids, pad = tokenize_for_encoder("clip_large", tok, ["the cat", "a dog on the left"], max_length=77)
    assert ids.shape == pad.shape and ids.dtype == torch.long and pad.dtype == torch.bool
    assert ids[0, 0] == 0 and pad[0].sum() > 0 and not pad[1].any()
    assert ids[1, (~pad[1]).sum() - 1] == 1  # ends with <|endoftext|>

    # tiny BERT WordPiece for ViLT
    bert_dir = tmp_path / "bert_tok"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog",
                                                   "on", "left", "a"]) + "\n")
    BertTokenizer(str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    tok = load_encoder_tokenizer("vilt", bert_dir)
    ids, pad = tokenize_for_encoder("vilt", tok, ["The cat", "a dog on the left"], max_length=40)
    assert ids[0].tolist()[:4] == [2, 5, 6, 3] and pad[0, 4:].all()  # [CLS] the cat [SEP] <pad>...
    with pytest.raises(ValueError, match="empty"):
        tokenize_for_encoder("vilt", tok, [" "], max_length=40)


def test_beit3_early_image_cls_equals_evf_sam_encode_prompts():
    import dataclasses

    from evf_sam.models import evf_sam as evf

    fields = {f.name for f in dataclasses.fields(evf.EvfSamConfig)}
    kw = dict(sam_variant="tiny", encoder="beit3_tiny")
    model = evf.build_evf_sam(evf.EvfSamConfig(**{k: v for k, v in kw.items() if k in fields})).eval()
    adapter = _build("beit3_tiny", "early", "image_cls").eval()
    adapter.load_state_dict(model.encoder.state_dict())
    ids, pad, image = _inputs(adapter)
    image = torch.nn.functional.interpolate(image, size=(model.beit_image_size,) * 2) \
        if model.beit_image_size != adapter.image_size else image
    with torch.no_grad():
        ref = model.encode_prompts(image, ids, pad)  # (N, 1, C)
        ours = model.projector(adapter(text_ids=ids, text_padding_mask=pad, image=image))[:, None]
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------------------------------------
# Trainable-module globs (paper Tab. 4)


def _glob_groups():
    import yaml

    out = {}
    for f in sorted((CONFIGS / "trainable").glob("*.yaml")):
        out[f.stem] = yaml.safe_load(f.read_text())
    return out


TRAINABLE_PARAM_NAMES = [
    "encoder.text_embed.weight", "encoder.encoder.layers.0.self_attn.q_proj.A.weight", "projector.fc1.weight",
    "projector.fc2.bias", "sam.prompt_encoder.no_mask_embed.weight",
    "sam.mask_decoder.transformer.layers.0.self_attn.q_proj.weight", "sam.image_encoder.blocks.0.attn.qkv.weight",
    "sam.image_encoder.neck.0.weight",
]


def test_trainable_groups_select_the_papers_rows():
    groups = _glob_groups()
    assert groups, "configs/trainable/ holds no groups: the Tab. 4 ablation axis is gone"

    def trainable(group):
        pats = group["params"]
        return {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("sam.") else "")
                for n in TRAINABLE_PARAM_NAMES if any(fnmatch.fnmatchcase(n, p) for p in pats)}

    for name, group in groups.items():
        chosen = trainable(group)
        assert "sam.image_encoder" not in chosen, name  # SAM image encoder always frozen
        assert "projector" in chosen, name  # the projector is new: always trained
        assert group["name"] == name
    assert trainable(groups["enc_proj_prompt_mask"]) == {"encoder", "projector", "sam.prompt_encoder",
                                                        "sam.mask_decoder"}
    assert trainable(groups["proj_prompt_mask"]) == {"projector", "sam.prompt_encoder", "sam.mask_decoder"}
    assert trainable(groups["enc_proj"]) == {"encoder", "projector"}
    assert trainable(groups["enc_proj_mask"]) == {"encoder", "projector", "sam.mask_decoder"}
    assert trainable(groups["proj"]) == {"projector"}


# ---------------------------------------------------------------------------------------------
# Experiment files (Hydra multirun sweeps over the paper's rows)

AXIS_GROUPS = ("encoder", "fusion", "feature", "trainable", "sam", "data")
AXIS_DEFAULTS = ("beit3_large", "early", "auto", "enc_proj_prompt_mask", "vit_h", "refer_mix")
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("table*.yaml"))

def test_every_ablation_table_has_an_experiment():
    """The parametrised tests below run once per file found: a deleted file must fail here, not vanish."""
    from evf_sam.paper_numbers import TABLES

    # Tab. 2 compares published methods: its one row of ours is the main run (scripts/train.py's defaults)
    ablations = sorted(t for t in TABLES if t != "table2")
    assert EXPERIMENTS == ablations, f"configs/experiment/ has {EXPERIMENTS}; the ablations: {ablations}"


def _sweep_rows(config_dir: Path, experiment: str, extra: list[str]):
    """Composes +experiment=<experiment>, expands its hydra.sweeper.params, composes every row."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        base = compose("train", overrides=[f"+experiment={experiment}", *extra], return_hydra_config=True)
        params = dict(base.hydra.sweeper.params)
        assert base.hydra.mode.name == "MULTIRUN" and len(params) == 1, params
        (key, spec), = params.items()
        if spec.strip() == "glob(*)":
            values = sorted(p.stem for p in (config_dir / key.lstrip("+")).glob("*.yaml"))
        else:
            values = [v.strip() for v in spec.split(",")]
        rows = [compose("train", overrides=[f"+experiment={experiment}", f"{key}={v}", *extra]) for v in values]
    return base, rows


def _check_row(cfg, table: str):
    from evf_sam.models.beit3 import BEIT3_CONFIGS
    from evf_sam.paper_numbers import paper_row

    enc = cfg.encoder.name
    depth = BEIT3_CONFIGS[enc].depth if enc in BEIT3_CONFIGS else None
    feature = check_combination(enc, cfg.fusion.mode, cfg.feature.value, cfg.fusion.fused_layers, depth=depth)
    axes = {"encoder": enc, "fusion": cfg.fusion.name, "feature": feature, "trainable": cfg.trainable.name,
            "sam": cfg.sam.name, "data": cfg.data.name, "extra_data": cfg.extra_data.name if "extra_data" in cfg else None}
    assert paper_row(table, axes) is not None, (table, axes)
    return axes


_ENCODER_DIRS = {"clip_large": "/w/clip-l", "clip_large_openclip": "/w/clip-l-oc", "clip_huge": "/w/clip-h",
                 "vilt": "/w/vilt"}
_TABLE_DIRS = {"table1": ("clip_large",), "table3": tuple(_ENCODER_DIRS), "table7": ("clip_large", "vilt")}


def _table_extra(experiment: str) -> list[str]:
    return ["weights.tokenizer=/w/tok"] + [f"encoder_dirs.{e}={_ENCODER_DIRS[e]}" for e in _TABLE_DIRS.get(experiment, ())]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sweeps_compose_against_a_minimal_primary_config(experiment, tmp_path):
    """Independent of configs/train.yaml: a primary config holding only the four axis groups."""
    import shutil

    from evf_sam.paper_numbers import TABLES, paper_row

    for g in (*AXIS_GROUPS, "extra_data", "experiment"):  # extra_data: selected by table6 itself
        shutil.copytree(CONFIGS / g, tmp_path / g)
    defaults = "\n".join(f"  - {g}: {d}" for g, d in zip(AXIS_GROUPS, AXIS_DEFAULTS))
    (tmp_path / "train.yaml").write_text(f"defaults:\n{defaults}\n  - _self_\n")
    base, rows = _sweep_rows(tmp_path, experiment, _table_extra(experiment))
    assert base.paper_table == experiment
    seen = [_check_row(cfg, experiment) for cfg in rows]
    # one run per paper row (Tab. 7: and per official model-zoo row), no row twice; reference rows
    # (Tab. 1's LLaVA figure, quoted from LISA) have no run
    runnable = [r for r in TABLES[experiment].rows if r.kind in ("paper", "zoo")]
    assert len(seen) == len(runnable)
    assert {paper_row(experiment, a).source for a in seen} == {r.source for r in runnable}
    assert len({tuple(sorted(a.items())) for a in seen}) == len(seen)
    if experiment in ("table1", "table3", "table7"):  # each non-BEiT-3 row reads its own transformers dir
        for cfg in rows:
            want = _ENCODER_DIRS.get(cfg.encoder.name)
            assert cfg.encoder.pretrained == want and cfg.model.tokenizer == (want or "/w/tok"), cfg.encoder.name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sweeps_compose_with_train_yaml(experiment):
    assert (CONFIGS / "train.yaml").is_file(), "configs/train.yaml (the trainer's primary config) is missing"
    text = (CONFIGS / "train.yaml").read_text()
    missing = [g for g in AXIS_GROUPS if f"- {g}:" not in text]
    assert not missing, (
        f"configs/train.yaml's defaults list lacks the ablation groups {missing}; add "
        "'- encoder: beit3_large', '- fusion: early', '- feature: auto', '- trainable: enc_proj_prompt_mask'")
    _, rows = _sweep_rows(CONFIGS, experiment, _table_extra(experiment))
    for cfg in rows:
        _check_row(cfg, experiment)
    # every row trains into its own run directory (a shared one would resume the first row's run)
    assert len({cfg.run_dir for cfg in rows}) == len(rows), [cfg.run_dir for cfg in rows]
    assert all(cfg.run_dir.startswith(f"runs/{experiment}/") for cfg in rows)
