"""The shape of evf_sam/models: one registry in which every SAM variant and every prompt encoder is
declared once, listing names without importing Meta's sam2, and an acyclic import graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evf_sam.models import registry
from evf_sam.models.beit3 import BEIT3_CONFIGS
from evf_sam.models.efficient_sam import EFFICIENT_SAM_CONFIGS, EfficientSam, build_efficient_sam
from evf_sam.models.encoders import CLIP_PRESETS, VILT_PRESETS, build_prompt_encoder, encoder_kind
from evf_sam.models.sam import SAM_CONFIGS, SamBackend, build_sam
from evf_sam.models.sam2_backend import SAM2_CONFIGS, build_sam2_backend
from evf_sam.models.sam_backends import SAM_VARIANTS, build_sam_backend, resize_mode_of, sam_family

ROOT = Path(__file__).resolve().parents[1]


def test_every_sam_variant_is_registered_once_with_its_familys_builder():
    tables = {"sam": (SAM_CONFIGS, build_sam, SamBackend.resize_mode),
              "efficient_sam": (EFFICIENT_SAM_CONFIGS, build_efficient_sam, EfficientSam.resize_mode),
              "sam2": (SAM2_CONFIGS, build_sam2_backend, "square")}
    assert SAM_VARIANTS == tuple(v for table, _, _ in tables.values() for v in table)  # paper Tab. 7 order
    assert len(set(SAM_VARIANTS)) == len(SAM_VARIANTS)
    for family, (table, build, mode) in tables.items():
        for v in table:
            entry = registry.sam_family_of(v)
            assert (entry.name, entry.build, entry.resize_mode) == (family, build, mode)
            assert (sam_family(v), resize_mode_of(v)) == (family, mode)
    assert (SamBackend.resize_mode, EfficientSam.resize_mode) == ("pad", "square")


def test_every_encoder_is_registered_once():
    names = registry.encoder_names()
    assert names == (*BEIT3_CONFIGS, *CLIP_PRESETS, *VILT_PRESETS) and len(set(names)) == len(names)
    assert [encoder_kind(n) for n in names] == ["beit3"] * 3 + ["clip"] * 4 + ["vilt"] * 2
    assert registry.encoder_family_of("clip_huge").fusions == ("text", "late")
    with pytest.raises(ValueError, match="unknown encoder 'gpt'; choose one of beit3_large, .*vilt_tiny"):
        build_prompt_encoder("gpt")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already taken: tiny"):
        registry.register_sam_family("toy", resize_mode="pad", variants={"tiny": None})(build_sam)
    with pytest.raises(ValueError, match="family 'sam' is registered twice"):
        registry.register_sam_family("sam", resize_mode="pad", variants={"other": None})(build_sam)
    with pytest.raises(ValueError, match="already taken: clip_tiny"):
        registry.register_encoder_family("toy", fusions=("text",), variants={"clip_tiny": None})(lambda: None)
    assert "toy" not in {registry.sam_family_of(v).name for v in SAM_VARIANTS}


def test_a_variant_builds_through_the_registry():
    import torch

    with torch.device("meta"):
        sam = build_sam_backend("vit_b")
    assert type(sam) is SamBackend and (sam.image_size, sam.prompt_dim, sam.image_embedding_size) == \
        (1024, 256, (64, 64))


def test_listing_and_validating_variants_does_not_import_sam2():
    code = ("import sys\n"
            "from evf_sam.models.evf_sam import EvfSamConfig\n"
            "from evf_sam.models.sam_backends import SAM_VARIANTS, resize_mode_of, sam_family\n"
            "assert sam_family('sam2_hiera_l') == 'sam2' and resize_mode_of('sam2_tiny') == 'square'\n"
            "EvfSamConfig(sam_variant='sam2_tiny')\n"
            "print(sorted(m for m in sys.modules if m == 'sam2' or m.startswith('sam2.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---------------------------------------------------------------------------------------------
# Import graph of evf_sam/models

MODELS = ROOT / "evf_sam" / "models"
PKG = "evf_sam.models"
# The one import that goes against the layering (checkpoint.py, the IO, sits above evf_sam.py, the
# model). EvfSam.from_pretrained / save_pretrained are the public, HF-style entry points (README,
# predictor, trainer, scripts); they delegate to checkpoint.load_pretrained / save_pretrained,
# imported when called, so the implementation stays above the model and importing the model never
# imports the IO. Nothing else may import upwards, at module level or inside a function.
ALLOWED_BACK_EDGES = {(f"{PKG}.evf_sam", f"{PKG}.checkpoint")}


def _module_name(path: Path) -> str:
    return PKG if path.name == "__init__.py" else f"{PKG}.{path.stem}"


def _import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported models/ module: True if imported at module level (incl. class bodies and
    TYPE_CHECKING blocks), False if only inside functions}; ``from evf_sam.models import x`` counts
    as importing the submodule x."""
    import ast

    submodules = {p.stem for p in MODELS.glob("*.py") if p.name != "__init__.py"}
    graph: dict[str, dict[str, bool]] = {}
    for path in sorted(MODELS.glob("*.py")):
        edges: dict[str, bool] = {}

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    assert child.level == 0, f"{path.name}: relative import"
                    base = child.module or ""
                    targets = [f"{base}.{a.name}" if base == PKG and a.name in submodules else base
                               for a in child.names]
                for t in targets:
                    if t == PKG or t.startswith(PKG + "."):
                        t = ".".join(t.split(".")[:3])  # evf_sam.models.<module>
                        edges[t] = edges.get(t, False) or not in_function
                visit(child, nested)

        visit(ast.parse(path.read_text()), False)
        me = _module_name(path)
        edges.pop(me, None)
        graph[me] = edges
    return graph


def _find_cycle(graph: dict[str, dict[str, bool]], skip: set[tuple[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def dfs(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, {})):
            if (node, nxt) in skip:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
            if state.get(nxt) is None and (cycle := dfs(nxt, stack + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None and (cycle := dfs(start, [])):
            return cycle
    return None


def test_models_import_graph_is_acyclic():
    graph = _import_graph()
    assert len(graph) == len(list(MODELS.glob("*.py"))) and f"{PKG}.checkpoint" in graph
    for src, dst in ALLOWED_BACK_EDGES:  # the documented delegation exists, and only inside functions
        assert dst in graph[src], f"stale allowance {src} -> {dst}: drop it from ALLOWED_BACK_EDGES"
        assert graph[src][dst] is False, f"{src} imports {dst} at module level"
    cycle = _find_cycle(graph, ALLOWED_BACK_EDGES)
    assert cycle is None, "import cycle in evf_sam/models: " + " -> ".join(cycle)
    # loading and saving sit above the model: checkpoint imports evf_sam at module level
    assert graph[f"{PKG}.checkpoint"].get(f"{PKG}.evf_sam") is True


def test_import_graph_parser_sees_function_level_imports(tmp_path):
    """The checker itself: a function-level import that closes a cycle is found."""
    graph = {"a": {"b": True}, "b": {"c": True}, "c": {"a": False}}
    assert _find_cycle(graph, set()) == ["a", "b", "c", "a"]
    assert _find_cycle(graph, {("c", "a")}) is None
