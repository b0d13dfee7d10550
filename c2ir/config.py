"""Where the Hydra configs live, and the OmegaConf resolvers they use.

The top-level `configs/` folder is installed as the package `c2ir.configs`, so both a
source checkout (editable install) and a plain `pip install .` find it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

_PKG = Path(__file__).resolve().parent


def config_dir() -> Path:
    for cand in (_PKG / "configs", _PKG.parent / "configs"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError("c2ir's configs/ folder is missing from the installation")


def _shared_model(filename: str) -> str:
    """Path of a checkpoint in shared/models (or where it would be, so the error names it)."""
    from c2ir.data.shared import shared_model_path

    return str(shared_model_path(filename))


def _rank_suffix() -> str:
    """`_rank<N>` under torchrun (N > 0), so ranks do not share a run directory."""
    import os

    rank = int(os.environ.get("RANK", "0"))
    return f"_rank{rank}" if rank > 0 else ""


def _run_id() -> str:
    """`p<pid>`: two runs started in the same second get different run directories."""
    import os

    return f"p{os.getpid()}"


def register_resolvers() -> None:
    """The resolvers the configs use, and the structured configs (c2ir.schema) in Hydra's ConfigStore."""
    from c2ir.schema import register

    register()
    if not OmegaConf.has_resolver("c2ir.shared_model"):
        OmegaConf.register_new_resolver("c2ir.shared_model", _shared_model)
    if not OmegaConf.has_resolver("c2ir.run_id"):
        OmegaConf.register_new_resolver("c2ir.run_id", _run_id, use_cache=True)
    if not OmegaConf.has_resolver("c2ir.rank_suffix"):
        OmegaConf.register_new_resolver("c2ir.rank_suffix", _rank_suffix)


register_resolvers()
