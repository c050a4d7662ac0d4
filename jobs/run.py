"""spark-submit entry point: `spark-submit jobs/run.py ARGS` = `curate run --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate run --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--engine", "spark", *sys.argv[1:]]))
