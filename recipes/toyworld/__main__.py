"""`python -m groundvlm.recipes.toyworld build|list`: build (or list) the cached toy base models."""

import sys

from .build import main

if __name__ == "__main__":
    sys.exit(main())
