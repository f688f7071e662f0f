#![no_main]
//! The vhost-user message parser and state machine against a hostile frontend.
//!
//! The input (`fuzz_common::vhost_msgs::Input`) is a sequence of messages — a request with a
//! payload shaped for it or raw, header flags, a size field, the fds attached; the replay
//! writes them to a socket pair and serves them with `engine::vhost_user::serve_connection` on
//! a fresh `NetServer`, then checks that nothing panicked, the server is left clear with every
//! device it started stopped, no file descriptor leaked, and the replies are well-formed. The
//! input types, the replay and the oracles live in `fuzz/common` (`vhost_msgs`), where the
//! regression tests replay the same inputs.

use libfuzzer_sys::fuzz_target;

use fuzz_common::vhost_msgs::{replay, Input};

fuzz_target!(|input: Input| {
    replay(&input);
});
