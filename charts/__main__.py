import sys

import charts  # noqa: F401  (quiets jsii's Node banner before cdk8s loads)
from charts.cli import main

if __name__ == "__main__":
    sys.exit(main())
