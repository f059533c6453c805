//! States (to come).
