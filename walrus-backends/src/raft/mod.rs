//! openraft + redb metadata store.
