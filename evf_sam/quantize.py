"""Low-precision inference of EVF-SAM's prompt side: the BEiT-3 encoder and the projector, SAM kept.

    model = EvfSam.from_pretrained("evf-sam")                   # float32
    quantize_prompt_encoder(model, "int8")                      # CPU: torch dynamic int8 (per-channel weights)
    quantize_prompt_encoder(model, "bnb-int8")                  # bitsandbytes LLM.int8 (official --load_in_8bit)
    quantize_prompt_encoder(model, "bnb-nf4")                   # bitsandbytes NF4 (official --load_in_4bit)
    quantize_prompt_encoder(model, "bf16")                      # bf16 weights + GEMMs, float32 activations
    quantized_layers(model)                                     # {name: kind} of what was converted

Official behaviour matched (hustvl/EVF-SAM ``inference.py``, ``init_models``): ``--load_in_8bit`` /
``--load_in_4bit`` hand transformers a ``BitsAndBytesConfig(llm_int8_skip_modules=["visual_model"])``,
so every ``nn.Linear`` outside SAM — BEiT-3 (``mm_extractor``) and the projector (``text_hidden_fcs``)
— becomes a bitsandbytes layer: ``Linear8bitLt`` with transformers' default outlier threshold 6.0,
or ``Linear4bit`` NF4 with double quantisation (``bnb_4bit_use_double_quant=True``) computing in
float16. Embeddings, convolutions, LayerNorms and the whole SAM keep their dtype. Here the compute
dtype of NF4 defaults to float16 on CUDA (official) and to the layer's dtype elsewhere (float16
GEMMs are slow on CPUs).

Modes:
    "int8": ``torch.ao.quantization.quantize_dynamic`` with per-channel int8 weights and per-batch
        int8 activations (CPU only; deprecated in PyTorch but present in 2.14). Runs on
        ``torch.backends.quantized.engine`` ("x86" by default; "onednn" is faster on AMX CPUs).
    "bnb-int8" / "bnb-nf4": bitsandbytes (>= 0.45 runs on CPU as well as CUDA).
    "bf16" (or "fp16"): the linear weights stored in that dtype, each GEMM run in it (fp32
        accumulation), inputs and outputs in the surrounding dtype (float32 residual streams).

The layer objects are replaced in place; parameter names of everything else are unchanged. A
quantized model is for inference: ``state_dict`` / ``save_pretrained`` of it is not the official
float layout.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QUANT_MODES", "LowPrecisionLinear", "quantize_prompt_encoder", "quantized_layers"]

QUANT_MODES = ("int8", "bnb-int8", "bnb-nf4", "bf16", "fp16")
_BNB_INT8_THRESHOLD = 6.0  # transformers' BitsAndBytesConfig.llm_int8_threshold default (the official path)


class LowPrecisionLinear(nn.Linear):
    """``nn.Linear`` whose GEMM runs in its weight's dtype; the output has the input's dtype.

    Same parameters and names as ``nn.Linear``; only the weight/bias storage dtype differs.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features), in x's dtype."""
        w = self.weight
        b = None if self.bias is None else self.bias.to(w.dtype)
        return F.linear(x.to(w.dtype), w, b).to(x.dtype)


def _prompt_side(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, module) of what the official flags quantize: the encoder and the projector."""
    parts = [(n, getattr(model, n, None)) for n in ("encoder", "projector")]
    if any(m is None for _, m in parts) or not hasattr(model, "sam"):
        raise TypeError(f"quantize_prompt_encoder expects an EvfSam (encoder, projector, sam), got {type(model).__name__}")
    return parts


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, str, nn.Linear]]:
    """(parent, attribute, full name, layer) of every plain ``nn.Linear`` of the prompt side."""
    out = []
    for prefix, root in _prompt_side(model):
        for name, parent in root.named_modules():
            for attr, child in parent.named_children():
                if type(child) is nn.Linear:
                    full = ".".join(x for x in (prefix, name, attr) if x)
                    out.append((parent, attr, full, child))
    return out


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError("modes 'bnb-int8' / 'bnb-nf4' need bitsandbytes: pip install 'bitsandbytes>=0.45' "
                          "(or use mode='int8', torch's dynamic int8, on CPU)") from e
    return bnb


_BNB_INT8_CLASS = None


def _bnb_int8_class():
    """bitsandbytes' ``Linear8bitLt`` fed float16 activations (LLM.int8 quantizes fp16 inputs; the official
    model is fp16 throughout), output back in the input's dtype. Made once, on first use (bnb is optional)."""
    global _BNB_INT8_CLASS
    if _BNB_INT8_CLASS is None:
        bnb = _bnb()

        class Int8Linear(bnb.nn.Linear8bitLt):
            def forward(self, x: Tensor) -> Tensor:
                """(..., in_features) -> (..., out_features), in x's dtype."""
                return super().forward(x.to(torch.float16)).to(x.dtype)

        _BNB_INT8_CLASS = Int8Linear
    return _BNB_INT8_CLASS


def _to_bnb_int8(layer: nn.Linear, device: torch.device) -> nn.Module:
    bnb = _bnb()
    q = _bnb_int8_class()(layer.in_features, layer.out_features, bias=layer.bias is not None,
                            has_fp16_weights=False, threshold=_BNB_INT8_THRESHOLD, device="meta")
    q.weight = bnb.nn.Int8Params(layer.weight.data.detach().clone(), requires_grad=False, has_fp16_weights=False)
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.data.detach().clone(), requires_grad=False)
    return q.to(device)  # the move quantizes (row-wise absmax int8 + outlier threshold)


def _to_bnb_nf4(layer: nn.Linear, device: torch.device, compute_dtype: torch.dtype | None) -> nn.Module:
    bnb = _bnb()
    if compute_dtype is None:
        compute_dtype = torch.float16 if device.type == "cuda" else layer.weight.dtype
    q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta")
    q.weight = bnb.nn.Params4bit(layer.weight.data.detach().clone(), requires_grad=False, compress_statistics=True,
                                 quant_type="nf4")
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.data.detach().clone(), requires_grad=False)
    return q.to(device)


def _to_low_precision(layer: nn.Linear, dtype: torch.dtype) -> nn.Module:
    layer.weight.data = layer.weight.data.to(dtype)
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(dtype)
    layer.__class__ = LowPrecisionLinear
    return layer


def _torch_dynamic_int8(root: nn.Module) -> None:
    """Per-channel dynamic int8 on every nn.Linear under ``root``, in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated (still in torch 2.14)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(root, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def quantize_prompt_encoder(model: nn.Module, mode: str, *, compute_dtype: torch.dtype | None = None) -> list[str]:
    """Converts every ``nn.Linear`` of ``model.encoder`` (BEiT-3) and ``model.projector`` in place; SAM kept.

    Args:
        model: an `EvfSam` (float32, or float16/bfloat16 for the bitsandbytes modes), in eval mode.
        mode: one of `QUANT_MODES` (see the module docstring).
        compute_dtype: "bnb-nf4" only: the dtype of its GEMMs (default float16 on CUDA, else the
            layer's dtype).
    Returns:
        the names of the converted layers (e.g. ``encoder.encoder.layers.0.self_attn.q_proj.A``).
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    if model.training:
        raise ValueError("quantize_prompt_encoder is for inference: call model.eval() first")
    layers = _linears(model)
    if not layers:
        raise ValueError("the model's encoder and projector have no nn.Linear layers left to convert "
                         "(already quantized?)")
    names = [full for _, _, full, _ in layers]
    if mode == "int8":
        dev = layers[0][3].weight.device
        if dev.type != "cpu":
            raise ValueError(f"mode 'int8' (torch dynamic quantization) runs on CPU only, the model is on {dev}; "
                             f"use 'bnb-int8' on CUDA")
        if layers[0][3].weight.dtype != torch.float32:
            raise ValueError("mode 'int8' needs a float32 model (torch dynamic quantization takes float32 input)")
        for _, root in _prompt_side(model):
            _torch_dynamic_int8(root)
        return names
    for parent, attr, _, layer in layers:
        if mode == "bnb-int8":
            new = _to_bnb_int8(layer, layer.weight.device)
        elif mode == "bnb-nf4":
            new = _to_bnb_nf4(layer, layer.weight.device, compute_dtype)
        else:
            new = _to_low_precision(layer, torch.bfloat16 if mode == "bf16" else torch.float16)
        setattr(parent, attr, new)
    return names


def quantized_layers(model: nn.Module) -> dict[str, str]:
    """{module name: kind} of the model's low-precision linear layers: "int8" (torch dynamic),
    "bnb-int8", "bnb-nf4", "bf16", "fp16". Empty for a float model."""
    out = {}
    try:
        import bitsandbytes as bnb
        bnb_kinds = ((bnb.nn.Linear8bitLt, "bnb-int8"), (bnb.nn.Linear4bit, "bnb-nf4"))
    except ImportError:
        bnb_kinds = ()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    for name, m in model.named_modules():
        if isinstance(m, DynamicQuantLinear):
            out[name] = "int8"
        elif isinstance(m, LowPrecisionLinear):
            out[name] = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(m.weight.dtype, str(m.weight.dtype))
        else:
            for cls, kind in bnb_kinds:
                if isinstance(m, cls):
                    out[name] = kind
    return out
