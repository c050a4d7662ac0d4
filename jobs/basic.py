"""spark-submit entry point: `spark-submit jobs/basic.py ARGS` = `curate basic --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate basic --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["basic", "--engine", "spark", *sys.argv[1:]]))
