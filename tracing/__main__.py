import sys

from tracing.cli import main

sys.exit(main())
