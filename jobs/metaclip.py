"""spark-submit entry point: `spark-submit jobs/metaclip.py ARGS` = `curate metaclip --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate metaclip --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["metaclip", "--engine", "spark", *sys.argv[1:]]))
