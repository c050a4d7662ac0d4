"""spark-submit entry point: `spark-submit jobs/laion2b.py ARGS` = `curate laion2b --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate laion2b --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["laion2b", "--engine", "spark", *sys.argv[1:]]))
