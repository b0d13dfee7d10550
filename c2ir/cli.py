"""`c2ir <stage> [hydra overrides]`: picks the stage, hands the rest to Hydra.

Everything after the stage name is ordinary Hydra: overrides, `--help`, `--cfg job`,
`-m/--multirun`. `c2ir report <multirun_dir>` aggregates a sweep. User errors
(`C2IRError`) print one line and exit with status 2; set HYDRA_FULL_ERROR=1 for the
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from c2ir.config import config_dir, register_resolvers
from c2ir.errors import C2IRError
from c2ir.names import install_log_escaping, printable
from c2ir.stages import STAGES, stage_task

log = logging.getLogger("c2ir")

_GROUP_OVERRIDE = re.compile(r"^(?P<group>[a-z_]+)=(?P<value>.+)$")


def usage() -> str:
    width = max(len(s) for s in STAGES) + 2
    lines = ["usage: c2ir <stage> [hydra overrides ...]   (c2ir <stage> --help for its config)", "", "stages:"]
    lines += [f"  {name:<{width}}{desc}" for name, (_, desc) in STAGES.items()]
    lines += [f"  {'report':<{width}}aggregate a multirun folder (table + sweep_report.html): c2ir report <multirun_dir>", "",
              "examples:", "  c2ir run", "  c2ir run experiment=cifar10_resnet20_cpu",
              "  c2ir evaluate ood=[tin_resize,mnist] ipm=mean_l2", "  c2ir synthesize -m synth.iterations=100,300"]
    return "\n".join(lines)


def fail(message: str, code: int = 2) -> int:
    print(f"c2ir: error: {printable(message)}", file=sys.stderr)  # one line, whatever a path in it holds
    return code


def group_options(group: str) -> list[str]:
    """The options of config group `group` (YAML files and the schema's ConfigStore entries); [] if none.
    Call inside Hydra's initialize_config_dir."""
    from hydra.core.global_hydra import GlobalHydra

    return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def list_groups() -> set[str]:
    """The config groups whose value is a list of options (`detectors`, `ood`): those the primary config's defaults
    list as lists; every other group takes one option."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(config_dir() / "config.yaml").get("defaults", [])
    return {k for d in defaults if isinstance(d, Mapping) for k, v in d.items() if isinstance(v, Sequence)
            and not isinstance(v, str)}


def parse_override(parser: Any, arg: str) -> Any:
    """One override through Hydra's parser; a grammar error is one line naming the override (Hydra's own first
    line says only where in it the parser stopped)."""
    try:
        return parser.parse_override(arg)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "=" not in arg and not arg.startswith("~"):   # `score.input=/tmp/my dir`: the shell split the value at the space
            raise C2IRError(f"cannot parse {arg!r}: an override is key=value; if a value holds a space the shell split it "
                            "there: quote the whole override, e.g. \"score.input='/tmp/my dir'\"") from None
        bad = re.search(r"token recognition error at: '(.*)'$", first)
        key = arg.split("=", 1)[0].lstrip("+~") or "key"
        if bad and bad[1][:1] in "'\"":
            raise C2IRError(f"cannot parse {arg!r}: a quote is not closed; close it, e.g. \"{key}='...'\"") from None
        if first.startswith("LexerNoViableAltException") or bad:   # a character outside the grammar
            from c2ir.validation import needs_quotes

            raise C2IRError(needs_quotes(arg)) from None
        raise C2IRError(f"cannot parse {arg!r} ({first[:160]}); check its brackets, braces and quotes") from None


def check_group_choices(overrides: list[str], parsed: list[Any]) -> None:
    """Unknown config-group options get one line listing the valid ones (before Hydra composes). The values are
    read by Hydra's own override parser, so its sweep forms (`detectors=[msp],[energy]`, `choice(...)`) are read as
    Hydra reads them; a list given to a group that takes one option is refused (Hydra would keep its last entry).
    `parsed`: `overrides` through `parse_override`, as `validate_overrides` has them."""
    from hydra.core.override_parser.types import ChoiceSweep

    lists = list_groups()
    for arg, override in zip(overrides, parsed):
        m = _GROUP_OVERRIDE.match(arg.lstrip("+"))
        options = group_options(m["group"]) if m else []
        if not options:
            continue
        value, group = override.value(), m["group"]
        if override.package or override.is_delete() or "$" in arg:
            continue
        if isinstance(value, ChoiceSweep):
            values = list(override.sweep_iterator())
        elif isinstance(value, (str, list)):
            values = [value]
        else:   # null, range(...), glob(...): Hydra reports what does not fit
            continue
        for v in values:
            if v is None or v == []:   # null deselects the group; [] is refused where it matters (validation)
                continue
            if isinstance(v, list) and len(v) == 1 and group not in lists:
                v = v[0]   # ipm=[mean_l2] is ipm=mean_l2
            if isinstance(v, list) and group not in lists:
                shown = ",".join(str(x) for x in v)
                raise C2IRError(f"{group}=[{shown}]: {group} takes one option, not a list; for one run per option "
                                f"sweep it: c2ir <stage> -m {group}={shown}")
            chosen = [str(x) for x in v] if isinstance(v, list) else [str(v)]
            for c in chosen:
                if c not in options:
                    raise C2IRError(f"unknown {group} {c!r}; choose from: {', '.join(options)}")
            if isinstance(v, list) and len(set(chosen)) != len(chosen):
                twice = sorted({c for c in chosen if chosen.count(c) > 1})
                raise C2IRError(f"{group}=[{','.join(chosen)}] lists {', '.join(twice)} more than once; give each once")


# Hydra's command-line flags (hydra.cc/docs/advanced/hydra-command-line-flags): those that take a value,
# and --info, whose topic is optional; the others take none.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                     "-cd", "--experimental-rerun"}
_FLAGS_WITHOUT_VALUE = {"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r", "--multirun", "-m",
                        "--shell-completion", "-sc"}
_FLAGS_OPTIONAL_VALUE = {"--info", "-i"}


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the overrides, so flags work in any position.

    Hydra's parser wants flags before overrides; `c2ir run model=x --cfg job` would otherwise
    fail with 'unrecognized arguments'.
    """
    flags, overrides, i = [], [], 0
    while i < len(args):
        tok = args[i]
        name = tok.split("=", 1)[0]
        known = tok.startswith("-") and name in (_FLAGS_WITH_VALUE | _FLAGS_WITHOUT_VALUE | _FLAGS_OPTIONAL_VALUE)
        if not known:
            overrides.append(tok)
        else:
            flags.append(tok)
            nxt = args[i + 1] if i + 1 < len(args) else None
            takes = "=" not in tok and nxt is not None and (
                name in _FLAGS_WITH_VALUE
                or (name in _FLAGS_OPTIONAL_VALUE and not nxt.startswith("-") and "=" not in nxt))
            if takes:
                flags.append(nxt)
                i += 1
        i += 1
    return flags, overrides


_NO_VALIDATION_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
                        "--shell-completion", "-sc", "--experimental-rerun"}


def check_output_dir(key: str, value: Any) -> None:
    """The run (or sweep) folder Hydra will create is creatable: a folder is made and removed in its nearest
    existing parent, so a read-only or missing location is one line before Hydra starts, not a traceback."""
    path = Path(str(value)).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise C2IRError(f"{key}={value} cannot be created: {parent} is a file; set {key} to a writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".c2ir-write-test-", dir=parent))
    except OSError as exc:
        raise C2IRError(f"{key}={value} cannot be created: {parent} is not writable ({exc.strerror or exc}); "
                        f"set {key} to a writable folder") from None


def validate_overrides(overrides: list[str], compose_all: bool = True, multirun: bool = False) -> None:
    """Compose the config for every value of every sweep and validate it against the schemas.

    Runs before Hydra starts, so a bad value is one line (exit 2) rather than Hydra's
    multi-line report or a traceback inside a stage, and a sweep fails before its first job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from c2ir.validation import explain, validate

    parser = OverridesParser.create()
    parsed = [parse_override(parser, o) for o in overrides]
    plain_args = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    variants: list[list[str]] = [plain_args]
    for sw in sweeps:
        values = list(sw.sweep_string_iterator())
        if not values:
            continue
        key = sw.get_key_element()
        others = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" for o in sweeps if o is not sw]
        variants += [[*plain_args, *others, f"{key}={v}"] for v in values]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        check_group_choices(overrides, parsed)
        if not compose_all:
            return
        # the run or sweep folder Hydra will create (hydra.* keys need the Hydra config); without sweeps that
        # one composition is also the one validated, so a plain run composes once here instead of twice
        out_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        try:
            with_hydra = compose("config", overrides=[o.input_line for o in parsed if not o.is_sweep_override()],
                                 return_hydra_config=True)
        except Exception:  # noqa: BLE001 - reported by the composition of the job's own config below
            with_hydra = None
        try:
            out_dir = OmegaConf.select(with_hydra, out_key) if with_hydra is not None else None
        except OmegaConfBaseException as exc:   # e.g. hydra.run.dir=${oc.env:UNSET}/runs
            raise C2IRError(f"{out_key}: {explain(exc)}") from None
        if out_dir:
            check_output_dir(out_key, out_dir)
        here = jobs_run_here(OmegaConf.select(with_hydra, "hydra.launcher._target_", default=None)
                             if with_hydra is not None else None, multirun)
        if with_hydra is not None and not sweeps:   # the one variant: validate the composition made above
            with open_dict(with_hydra):   # the job's config has no `hydra` node (Hydra removes it): neither may this
                del with_hydra["hydra"]
            validate(with_hydra, keep_cache_root=False)   # before Hydra: a later error must leave no folder
            check_detectors(with_hydra)
            if here:
                check_device(with_hydra)
            return
        for variant in variants:
            try:
                cfg = compose("config", overrides=variant)
            except C2IRError:
                raise
            except Exception as exc:  # noqa: BLE001 - ConfigCompositionException, OmegaConf errors alike
                raise C2IRError(explain(exc)) from None
            validate(cfg, keep_cache_root=False)
            check_detectors(cfg)
            if here:
                check_device(cfg)


LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")   # Hydra's, joblib's, submitit's local one


def jobs_run_here(launcher_target: str | None, multirun: bool) -> bool:
    """Whether the jobs run on this machine: a plain run, or a sweep with a local launcher. A SLURM (or other
    remote) launcher's jobs run on other nodes, whose devices this machine cannot check (each job checks its own)."""
    return not multirun or not launcher_target or str(launcher_target).rsplit(".", 1)[-1] in LOCAL_LAUNCHERS


def check_device(cfg: Any) -> None:
    """`device=` names a device this machine has (`device.resolve_device`'s checks), before Hydra makes a run
    folder: a config check like the others, and torch is imported by `check_detectors` just before. Only for jobs
    that run here (`jobs_run_here`)."""
    from c2ir.device import resolve_device

    resolve_device(cfg.get("device", "auto"))


def check_detectors(cfg: Any) -> None:
    """Build every configured detector (constructors only, nothing computed) so that a bad detector parameter
    (unknown, wrong type, out of range) is one line before Hydra makes a run folder, not after it. Last of the
    checks: it imports torch, which the faster config checks above do not need."""
    from c2ir.stages.fit import configured_detectors

    configured_detectors(cfg)


def _log_to_files(message: str) -> None:
    """An ERROR record for the log files only (Hydra's run.log), so the terminal shows the error once."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO,
               errno.ENOTDIR, errno.EISDIR, errno.ENOENT}


def os_error_line(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return (f"cannot access{where} ({exc.strerror or exc}); check that the folder exists, is writable and its disk "
            "has space (cache_root=..., hydra.run.dir=... choose other folders)")


def other_running_tasks(samples: int = 3, pause: float = 0.01) -> int | None:
    """How many other tasks are runnable right now (Linux `/proc/loadavg`'s running count, minus this one), the
    least of a few samples so a momentary burst does not count; None where there is no /proc. Not the load
    average: its minute-long memory would count a run that has just finished (a second `c2ir run` in a row)."""
    import time

    counts = []
    for i in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(pause)
    return max(0, min(counts))


def busy_machine_hint(others: int, cores: int, threads: int) -> str | None:
    """The warning for torch threads that outnumber the free cores (`cores - others`, `others` the tasks of other
    programs running now) by more than half a core, else None. Why: two torch threads on one free core thrash
    (README: a cold `c2ir run` took 202 s with 2 threads beside another job, 23-34 s with `threads=1`). A hint,
    not a change: the thread count can move results in their last digits."""
    if threads <= 1 or cores - others >= threads - 0.5:
        return None
    return (f"this machine is busy ({others} other running task(s) on {cores} cores) and torch uses {threads} threads, "
            f"which thrash on busy cores; pass threads=1 (or threads=N, at most the free cores) for speed (results can "
            f"differ in their last digits between thread counts)")


def busy_hint_now(threads: int) -> str | None:
    """`busy_machine_hint` for this machine now; None where it cannot tell: no /proc (not Linux), or a process
    confined to some of the CPUs (taskset, a cgroup cpuset, SLURM), where the host-wide running count would also
    count tasks on CPUs this process cannot use."""
    cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < cores:
        return None
    others = other_running_tasks()
    return None if others is None else busy_machine_hint(others, cores, threads)


def task(cfg: Any) -> dict:
    """The one Hydra task: the stage `cfg.stage` on the job of `cfg`; returns the stage's result (its
    metrics or paths, recorded by Hydra for sweepers). User errors end the process with one line."""
    import torch

    if cfg.get("threads"):  # process-wide torch state is set by the entry point, not by library objects
        torch.set_num_threads(int(cfg.threads))
    else:
        hint = busy_hint_now(torch.get_num_threads())
        if hint:
            log.warning(hint)
    from c2ir import distributed
    from c2ir.stages.job import cli_job

    distributed.init_from_env()  # under torchrun: join the process group (sets this rank's CUDA device)
    install_log_escaping()  # file names in log arguments cannot split or forge log lines
    try:
        try:
            return stage_task(str(cfg.stage))(cli_job(cfg))
        except OSError as exc:  # a disk or folder problem outside the cache's own writes (run folder, data)
            if isinstance(exc, C2IRError) or exc.errno not in DISK_ERRNOS:
                raise
            raise C2IRError(os_error_line(exc)) from None
    except C2IRError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _log_to_files(f"c2ir: error: {printable(exc)}")  # into the run's log file; the terminal gets the line below
        sys.stderr.flush()
        raise SystemExit(fail(str(exc))) from None


@contextlib.contextmanager
def _command_line(args: list[str]) -> Iterator[None]:
    """Hydra's documented entry point (`hydra.main`) reads its command line from sys.argv: hand it
    `args` for the duration of the call, and give the caller's sys.argv back afterwards."""
    saved = sys.argv
    sys.argv = ["c2ir", *args]
    try:
        yield
    finally:
        sys.argv = saved


def report_main(args: list[str]) -> int:
    from c2ir.report import aggregate

    if len(args) != 1 or args[0].startswith("-"):
        return fail("usage: c2ir report <multirun_dir>")
    install_log_escaping()
    folder = Path(args[0])
    if not folder.is_dir():
        return fail(f"not a folder: {folder}; pass the multirun directory (e.g. outputs/multirun/<date>/<time>_<stage>)")
    text, table = aggregate(folder)
    if not table:
        jobs = len(list(folder.rglob(".hydra/overrides.yaml")))
        if jobs:   # the sweep ran, and none of its jobs left results (each failed, or was killed, or still runs)
            return fail(f"none of the {jobs} jobs under {folder} left a readable results.json (failed, killed or still "
                        "running; each job's run.log says why); rerun the sweep: finished stages are cached")
        return fail(f"no results.json found under {folder}; run `c2ir evaluate -m ...` or `c2ir run -m ...` first")
    print(text)
    (folder / "sweep_results.md").write_text(text + "\n")
    from c2ir.report_html import write_sweep_report

    write_sweep_report(folder)  # after the table; a failure is a warning
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
    flags, overrides = split_flags(rest)
    register_resolvers()
    try:
        validate_overrides([*overrides, f"stage={stage}"],
                           compose_all=not _NO_VALIDATION_FLAGS.intersection(f.split("=", 1)[0] for f in flags),
                           multirun=bool({"-m", "--multirun"} & set(flags)))
    except C2IRError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        return fail(str(exc))
    import hydra

    app = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(task)
    with _command_line([*flags, f"stage={stage}", *overrides]):
        app()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
