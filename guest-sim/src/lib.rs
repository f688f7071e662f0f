//! guest-sim
