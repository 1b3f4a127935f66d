"""groundvlm processors and image processors (these files also ship to the Hub as remote code).

Importing this package registers every processor with `AutoProcessor` / `AutoImageProcessor`.
"""

__all__: list[str] = []

# [vpgtrans]
# [pin]
# [groma]
