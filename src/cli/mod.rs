//! The operator commands besides `run`: `check`, `dead`, `enqueue` and
//! `schedule`.

pub mod check;
pub mod dead;
pub mod enqueue;
pub mod schedule;
