"""`python preparation/add_special_tokens.py --base MODEL --mode 8ratio --out DIR`: the script
name users of the original project know; same as `budgetthinker prepare`."""

import sys

from budgetthinker.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
