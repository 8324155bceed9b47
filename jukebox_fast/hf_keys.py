"""HF transformers' key names for the original's weights, both ways.

The original openai/jukebox modules and HF's port (``transformers.models.deprecated.jukebox``)
hold the same tensors under other names. These tables translate one into the other, so that a
state dict from either loads into our modules, and HF's port can serve as a test oracle on our
weights. Nothing here touches a tensor.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

__all__ = ["openai_to_hf_key", "openai_to_hf", "hf_to_openai", "looks_hf"]


# -- HF transformers names -------------------------------------------------------------------------
# openai/jukebox -> HF transformers (JukeboxVQVAE), restated from the conversion rules:
# an encoder block's step I is model.I.{0: strided conv, 1: Resnet1D} and its last conv model.K;
# HF flattens the steps into downsample_block.(2I, 2I+1) and calls the last conv proj_out. A
# decoder block's model.0 is HF's proj_in and its step I (from 1) becomes upsample_block.(2I-2,
# 2I-1). Residual convs model.{1,3} are conv1d_{1,2}; the codebook k is codebook.
_ENC = r"(?P<p>(?:vqvae\.)?encoders\.\d+\.level_blocks\.\d+)"
# The upsampler conditioner's stack is a decoder block too (renamed afterwards, see _PRIOR_RENAMES).
_DEC = r"(?P<p>(?:vqvae\.)?decoders\.\d+\.level_blocks\.\d+|conditioner_blocks\.0\.cond)"
_P = r"(?P<s>weight|bias)"
_CONV = {"1": "1", "3": "2"}
_CONV_BACK = {"1": "1", "2": "3"}

_TO_HF: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(rf"^{_ENC}\.model\.(?P<i>\d+)\.0\.{_P}$"),
     lambda m: f"{m['p']}.downsample_block.{2 * int(m['i'])}.{m['s']}"),
    (re.compile(rf"^{_ENC}\.model\.(?P<i>\d+)\.1\.model\.(?P<b>\d+)\.model\.(?P<c>[13])\.{_P}$"),
     lambda m: f"{m['p']}.downsample_block.{2 * int(m['i']) + 1}.resnet_block.{m['b']}.conv1d_{_CONV[m['c']]}.{m['s']}"),
    (re.compile(rf"^{_ENC}\.model\.\d+\.{_P}$"), lambda m: f"{m['p']}.proj_out.{m['s']}"),
    (re.compile(rf"^{_DEC}\.model\.0\.{_P}$"), lambda m: f"{m['p']}.proj_in.{m['s']}"),
    (re.compile(rf"^{_DEC}\.model\.(?P<i>\d+)\.0\.(?:model|blocks)\.(?P<b>\d+)\.model\.(?P<c>[13])\.{_P}$"),
     lambda m: f"{m['p']}.upsample_block.{2 * int(m['i']) - 2}.resnet_block.{m['b']}.conv1d_{_CONV[m['c']]}.{m['s']}"),
    (re.compile(rf"^{_DEC}\.model\.(?P<i>\d+)\.1\.{_P}$"),
     lambda m: f"{m['p']}.upsample_block.{2 * int(m['i']) - 1}.{m['s']}"),
    (re.compile(r"^(?P<p>(?:vqvae\.)?bottleneck\.level_blocks\.\d+)\.k$"), lambda m: f"{m['p']}.codebook"),
]

_FROM_HF: list[tuple[re.Pattern, Callable[[re.Match, dict[str, int]], str]]] = [
    (re.compile(rf"^{_ENC}\.downsample_block\.(?P<n>\d+)\.resnet_block\.(?P<b>\d+)\.conv1d_(?P<c>[12])\.{_P}$"),
     lambda m, _: f"{m['p']}.model.{int(m['n']) // 2}.1.model.{m['b']}.model.{_CONV_BACK[m['c']]}.{m['s']}"),
    (re.compile(rf"^{_ENC}\.downsample_block\.(?P<n>\d+)\.{_P}$"),
     lambda m, _: f"{m['p']}.model.{int(m['n']) // 2}.0.{m['s']}"),
    (re.compile(rf"^{_ENC}\.proj_out\.{_P}$"), lambda m, steps: f"{m['p']}.model.{steps[m['p']]}.{m['s']}"),
    (re.compile(rf"^{_DEC}\.proj_in\.{_P}$"), lambda m, _: f"{m['p']}.model.0.{m['s']}"),
    (re.compile(rf"^{_DEC}\.upsample_block\.(?P<n>\d+)\.resnet_block\.(?P<b>\d+)\.conv1d_(?P<c>[12])\.{_P}$"),
     lambda m, _: f"{m['p']}.model.{int(m['n']) // 2 + 1}.0.model.{m['b']}.model.{_CONV_BACK[m['c']]}.{m['s']}"),
    (re.compile(rf"^{_DEC}\.upsample_block\.(?P<n>\d+)\.{_P}$"),
     lambda m, _: f"{m['p']}.model.{(int(m['n']) + 1) // 2}.1.{m['s']}"),
    (re.compile(r"^(?P<p>(?:vqvae\.)?bottleneck\.level_blocks\.\d+)\.codebook$"), lambda m, _: f"{m['p']}.k"),
]
_DOWN_STEP = re.compile(rf"^{_ENC}\.downsample_block\.(?P<n>\d+)\.")


# Prior keys, applied in order after the block rules above: HF's names for the conditioners, the
# lyric encoder, layer norms, embeddings and Conv1D parameters (w, b -> weight, bias).
_PRIOR_RENAMES: list[tuple[re.Pattern, str]] = [(re.compile(a), b) for a, b in [
    (r"^conditioner_blocks\.0\.cond\.", "conditioner_blocks.upsampler."),
    (r"^conditioner_blocks\.0\.ln\.", "conditioner_blocks.layer_norm."),
    (r"^conditioner_blocks\.0\.", "conditioner_blocks."),
    (r"^y_emb\.(artist_emb|bow_genre_emb)\.emb\.", r"metadata_embedding.\1."),
    (r"^y_emb\.", "metadata_embedding."),
    (r"^prime_state_proj\.", "encoder.proj_in."),
    (r"^prime_state_ln\.", "encoder.final_layer_norm."),
    (r"^prime_x_out\.", "encoder.lm_head."),
    (r"^prime_prior\.", "encoder."),
    (r"(^|\.)x_emb\.", r"\1embed_tokens."),
    (r"^prior\.x_out\.", "prior.fc_proj_out."),
    (r"\.ln_([01])\.", r".layer_norm_\1."),
    (r"\.(c_attn|c_enc_kv|c_proj|c_fc|proj_in)\.w$", r".\1.weight"),
    (r"\.(c_attn|c_enc_kv|c_proj|c_fc|proj_in)\.b$", r".\1.bias"),
]]


def openai_to_hf_key(key: str) -> str:
    """One original key (VQ-VAE or prior) -> HF transformers' name, without HF's model prefix."""
    for pattern, rename in _TO_HF:
        m = pattern.match(key)
        if m:
            key = rename(m)
            break
    if key.startswith(("vqvae.", "encoders.", "decoders.", "bottleneck.")):
        return key
    for pattern, replacement in _PRIOR_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def openai_to_hf(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A state dict with the original's names -> HF's. ``prefix`` places it in a JukeboxModel:
    ``"vqvae."``, or ``"priors.0."`` (top prior), ``"priors.1."``, ``"priors.2."`` (level-0 upsampler)."""
    return {prefix + openai_to_hf_key(k): v for k, v in state_dict.items()}


def hf_to_openai(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with HF's names -> the original's (a leading ``vqvae.`` is dropped)."""
    sd = {(k[6:] if k.startswith("vqvae.") else k): v for k, v in state_dict.items()}
    # HF's proj_out does not say after how many down steps it comes; count them per block.
    steps: dict[str, int] = {}
    for key in sd:
        m = _DOWN_STEP.match(key)
        if m:
            steps[m["p"]] = max(steps.get(m["p"], 0), int(m["n"]) // 2 + 1)
    out = {}
    for key, value in sd.items():
        for pattern, rename in _FROM_HF:
            m = pattern.match(key)
            if m:
                key = rename(m, steps)
                break
        out[key] = value
    return out


def looks_hf(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict is in HF's names (its codebooks and down-sampling blocks tell)."""
    return any(k.endswith(".codebook") or ".downsample_block." in k for k in state_dict)
