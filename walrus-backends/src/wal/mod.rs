//! memmap2 write-ahead log.
