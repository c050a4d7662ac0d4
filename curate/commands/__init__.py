"""The `curate` commands: one table of command -> help, arguments, run function (curate.cli
parses and dispatches), built from curate.commands.{pipeline,pool,evaluate,report}. Each run
function takes the parsed arguments; commands marked ``engine`` get ``args.session``
(curate.engines.open_session) and --engine/--workers/--master."""

from __future__ import annotations

from curate.commands.base import ENGINE_ARGS, OUT, POOL, Command, arg
from curate.commands.evaluate import evaluate_commands
from curate.commands.pipeline import pipeline_commands, run_stage_command
from curate.commands.pool import pool_commands
from curate.commands.report import report_commands
from curate.stages import STAGE_MODULES

__all__ = ["ENGINE_ARGS", "Command", "commands"]


def commands() -> dict[str, Command]:
    """Every `curate` subcommand: the pipeline, pool and report commands, and one per stage."""
    table = {**pipeline_commands(), **pool_commands(), **evaluate_commands(), **report_commands()}
    for name in STAGE_MODULES:
        table[name] = Command(f"run the {name} stage alone (adds its columns under OUT/{name}/)",
                              (POOL, OUT, arg("--set", action="append", default=[], metavar="KEY=VALUE",
                                              help="config override, e.g. --set min_side=300")),
                              run_stage_command, engine=True)
    return table
