"""`c2ir <stage> [hydra overrides]`: picks the stage, hands the rest to Hydra.

Everything after the stage name is ordinary Hydra: overrides, `--help`, `--cfg job`,
`-m/--multirun`. `c2ir report <multirun_dir>` aggregates a sweep. User errors
(`C2IRError`) print one line and exit with status 2; set HYDRA_FULL_ERROR=1 for the
traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from pathlib import Path

from c2ir.config import config_dir, register_resolvers
from c2ir.errors import C2IRError
from c2ir.stages import STAGES

log = logging.getLogger("c2ir")

_GROUP_OVERRIDE = re.compile(r"^(?P<group>[a-z_]+)=(?P<value>.+)$")


def usage() -> str:
    width = max(len(s) for s in STAGES) + 2
    lines = ["usage: c2ir <stage> [hydra overrides ...]   (c2ir <stage> --help for its config)", "", "stages:"]
    lines += [f"  {name:<{width}}{desc}" for name, (_, desc) in STAGES.items()]
    lines += [f"  {'report':<{width}}aggregate a multirun folder into one table: c2ir report <multirun_dir>", "",
              "examples:", "  c2ir run", "  c2ir run experiment=cifar10_resnet20_cpu",
              "  c2ir evaluate ood=[tin_resize,mnist] ipm=mean_l2", "  c2ir synthesize -m synth.iterations=100,300"]
    return "\n".join(lines)


def fail(message: str, code: int = 2) -> int:
    print(f"c2ir: error: {message}", file=sys.stderr)
    return code


def check_group_choices(overrides: list[str]) -> None:
    """Unknown config-group options get one line listing the valid ones (before Hydra composes)."""
    root = config_dir()
    for arg in overrides:
        m = _GROUP_OVERRIDE.match(arg)
        if not m or not (root / m["group"]).is_dir():
            continue
        raw = m["value"].strip()
        if raw in ("null", "[]") or "$" in raw or raw.startswith(("choice(", "range(", "glob(")):
            continue
        values = [v.strip() for v in raw.strip("[]").split(",") if v.strip()]
        options = sorted(p.stem for p in (root / m["group"]).glob("*.yaml"))
        for v in values:
            if v not in options:
                raise C2IRError(f"unknown {m['group']} {v!r}; choose from: {', '.join(options)}")


def _task(stage: str):
    def task(cfg) -> None:
        module = importlib.import_module(STAGES[stage][0])
        try:
            module.run(cfg)
        except C2IRError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("%s", exc)
            sys.stderr.flush()
            print(f"c2ir: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return task


def report_main(args: list[str]) -> int:
    from c2ir.report import aggregate

    if len(args) != 1 or args[0].startswith("-"):
        return fail("usage: c2ir report <multirun_dir>")
    folder = Path(args[0])
    if not folder.is_dir():
        return fail(f"not a folder: {folder}; pass the multirun directory (e.g. outputs/multirun/<date>/<time>_<stage>)")
    text, table = aggregate(folder)
    if not table:
        return fail(f"no results.json found under {folder}; run `c2ir evaluate -m ...` or `c2ir run -m ...` first")
    print(text)
    (folder / "sweep_results.md").write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from c2ir import __version__

        print(f"c2ir {__version__}")
        return 0
    stage, rest = args[0], args[1:]
    if stage == "report":
        return report_main(rest)
    if stage not in STAGES:
        return fail(f"unknown stage {stage!r}; choose one of: {', '.join([*STAGES, 'report'])}")
    try:
        check_group_choices(rest)
    except C2IRError as exc:
        return fail(str(exc))
    register_resolvers()
    import hydra

    sys.argv = ["c2ir", *rest, f"stage={stage}"]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(_task(stage))()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
