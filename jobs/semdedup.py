"""spark-submit entry point: `spark-submit jobs/semdedup.py ARGS` = `curate semdedup --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate semdedup --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["semdedup", "--engine", "spark", *sys.argv[1:]]))
