"""spark-submit entry point: `spark-submit jobs/metaclip_match.py ARGS` = `curate metaclip_match --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate metaclip_match --help` for ARGS.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["metaclip_match", "--engine", "spark", *sys.argv[1:]]))
