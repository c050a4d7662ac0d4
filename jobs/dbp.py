"""spark-submit entry point: `spark-submit jobs/dbp.py ARGS` = `curate dbp --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate dbp --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["dbp", "--engine", "spark", *sys.argv[1:]]))
