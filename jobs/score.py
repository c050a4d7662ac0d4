"""spark-submit entry point: `spark-submit jobs/score.py ARGS` = `curate score --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate score --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", "--engine", "spark", *sys.argv[1:]]))
