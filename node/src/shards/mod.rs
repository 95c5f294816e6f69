//! Room logs on Raft shards (issue [4/6], being built): a fixed number of
//! shards, each a Raft group on `rf` of the cluster's nodes. So far only the
//! pure placement; the groups themselves come next.

pub mod placement;
