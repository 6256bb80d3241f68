"""`python -m serving`: see serving/cli.py."""
import logging
import os
import sys

from serving.cli import main

if __name__ == "__main__":
    code = main()
    # The server has drained (or the command is done): skip the interpreter's finalisation, which spends seconds
    # freeing torch's state, time a pod's grace period would otherwise pay for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
