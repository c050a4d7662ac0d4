"""spark-submit entry point: `spark-submit jobs/cluster.py ARGS` = `curate cluster --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate cluster --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", "--engine", "spark", *sys.argv[1:]]))
