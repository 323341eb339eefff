"""Symbolization: /proc maps, ELF symbol tables, DWARF (via symbolic's SymCache), demangling.

Import `rsprof.symbols.resolver.Symbolizer` for the main entry point; this package
module itself stays import-light.
"""
