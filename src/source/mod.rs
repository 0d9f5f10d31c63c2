//! Where events come from. `kafka` is the live source: a consumer group,
//! positions committed only after an event's effects are done, invalid
//! records dead-lettered.

pub mod kafka;
pub mod profiles;
