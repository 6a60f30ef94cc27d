"""Command line: ``coreset-curate [--version] [-v|-q] COMMAND ...``.

User errors (bad arguments, bad files: the ValueError and OSError the toolkit raises on
purpose) end with one line on stderr and exit status 2; anything else is a bug and ends
with its traceback and exit status 1.
"""

from __future__ import annotations

import logging
import sys

from .parser import build_parser

log = logging.getLogger("coreset_curate")

USER_ERRORS = (ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"coreset-curate {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
