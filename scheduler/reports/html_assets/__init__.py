"""Pieces of the self-contained HTML reports: the stylesheet and script (`static`) and
the inline SVG charts (`charts`). Nothing here loads anything from the network."""
