//! In-memory fakes of every trait and conformance suites.
