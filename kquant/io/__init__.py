"""File formats kquant reads and writes: strict readers, streaming writers, atomic files."""
