"""The book's pictures, drawn by code from the library (never by hand).

Each module here holds the figures of one part of the book; each figure is a function that
returns a matplotlib Figure. `python -m qvl_minimal figures` writes them all to `figures/`.
"""
