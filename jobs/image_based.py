"""spark-submit entry point: `spark-submit jobs/image_based.py ARGS` = `curate image_based --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate image_based --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["image_based", "--engine", "spark", *sys.argv[1:]]))
