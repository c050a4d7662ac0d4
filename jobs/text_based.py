"""spark-submit entry point: `spark-submit jobs/text_based.py ARGS` = `curate text_based --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate text_based --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["text_based", "--engine", "spark", *sys.argv[1:]]))
