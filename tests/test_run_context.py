"""RunContext is plain data for one invocation: no process-wide side effects, no import cycle with the train stage."""

import subprocess
import sys

import torch

from conftest import REPO, make_cfg


def test_constructing_a_run_context_changes_no_process_state(tmp_path, monkeypatch):
    from c2ir.stages.common import RunContext

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: only the CLI entry point joins the group
    threads = torch.get_num_threads()
    ctx = RunContext(make_cfg(tmp_path, [f"threads={threads + 1}"]))  # a value the process does not have
    assert not torch.distributed.is_initialized()
    assert (ctx.dist.rank, ctx.dist.world) == (0, 1)
    assert torch.get_num_threads() == threads


def test_train_stage_imports_without_the_shared_context():
    code = ("import sys, c2ir.stages.train; assert 'c2ir.stages.common' not in sys.modules; "
            "import c2ir.stages.common")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_model_comes_from_the_checkpoint_or_the_train_stage(tmp_path):
    from c2ir.models import build_model
    from c2ir.stages.common import RunContext

    cfg = make_cfg(tmp_path)
    model = build_model(cfg.model)
    torch.save(model.state_dict(), tmp_path / "ck.pt")
    ctx = RunContext(make_cfg(tmp_path, [f"model.checkpoint={tmp_path / 'ck.pt'}"]))
    assert not ctx.uses_training and ctx.model_digest.startswith("checkpoint:")
    assert not ctx.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(ctx.model.state_dict()[k], v), k
    assert RunContext(cfg).uses_training
