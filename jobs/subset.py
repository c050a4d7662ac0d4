"""spark-submit entry point: `spark-submit jobs/subset.py ARGS` = `curate subset --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate subset --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["subset", "--engine", "spark", *sys.argv[1:]]))
