"""spark-submit entry point: `spark-submit jobs/align.py ARGS` = `curate align --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate align --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["align", "--engine", "spark", *sys.argv[1:]]))
