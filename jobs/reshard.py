"""spark-submit entry point: `spark-submit jobs/reshard.py ARGS` = `curate reshard --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate reshard --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["reshard", "--engine", "spark", *sys.argv[1:]]))
