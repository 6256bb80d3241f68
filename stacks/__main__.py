"""`python -m stacks preflight --env ENV`: checks to run before `npx cdk deploy` (stacks/preflight.py).
The stacks themselves are synthesized and deployed with `npx cdk synth|deploy` (app.py)."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "preflight":
        from stacks.preflight import main as preflight

        return preflight(rest)
    print(f"unknown command {command!r}: expected `preflight`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
