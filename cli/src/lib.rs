//! rcd's command-line clients: `rctr` now, `rnerd` and `rctl` later. [`client`] holds what
//! they share: connecting to rcd's socket, the namespace header, error messages.

pub mod client;
pub mod cmd;
pub mod compose;
pub mod format;
pub mod rnerd;
