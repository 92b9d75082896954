"""Config checks of the HiLoMoE registry entries (``dcnv2_hilomoe``, ``wukong_hilomoe``)."""

from __future__ import annotations

from recscale.configs.schema import JobConfig

DEFAULT_TOWERS: dict[str, list[str]] = {
    "dcnv2": ["deep"],
    "wukong": ["layers.*.fmb.mlp"],
}
"""Towers converted when ``model.hilomoe.towers`` is empty, by base architecture."""


def check_hilomoe(cfg: JobConfig) -> list[str]:
    """Problems of ``model.hilomoe`` and of its expert-parallel settings (``key.path: message``)."""
    h = cfg.model.hilomoe
    out = []
    if h.num_experts < 1:
        out.append(f"model.hilomoe.num_experts: expected >= 1, got {h.num_experts}")
    if h.num_layers < 1:
        out.append(f"model.hilomoe.num_layers: expected >= 1, got {h.num_layers}")
    if h.routing == "topk" and not 1 <= h.top_k <= max(h.num_experts, 1):
        out.append(f"model.hilomoe.top_k: expected 1..{h.num_experts} (num_experts), got {h.top_k}")
    for key in ("load_balance_weight", "z_loss_weight", "diversity_weight", "logit_scale", "expert_init_std"):
        if getattr(h, key) < 0:
            out.append(f"model.hilomoe.{key}: expected >= 0, got {getattr(h, key)}")
    if not 0.0 <= h.route_dropout < 1.0:
        out.append(f"model.hilomoe.route_dropout: expected 0 <= p < 1, got {h.route_dropout}")
    s = cfg.sharding
    if s.dense == "deepspeed" and s.ep_size > 1:
        experts = h.num_experts * (h.num_layers if s.moe.dispatch == "one_round" else 1)
        if experts % s.ep_size:
            what = "num_layers x num_experts" if s.moe.dispatch == "one_round" else "num_experts"
            out.append(
                f"sharding.ep_size: {s.ep_size} must divide the experts placed per MoE dispatch ({what} = {experts})"
            )
    if s.moe.capacity_factor < 0:
        out.append(f"sharding.moe.capacity_factor: expected >= 0 (0 = never drop), got {s.moe.capacity_factor}")
    elif s.moe.capacity_factor > 0 and s.moe.exchange == "dropless":
        out.append(
            f"sharding.moe.capacity_factor: {s.moe.capacity_factor} drops routes over capacity, which only "
            "sharding.moe.exchange: padded does (dropless sends every route; set capacity_factor: 0)"
        )
    return out
