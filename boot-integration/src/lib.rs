//! ferry-boot: switching the running deployment, atomically.
//!
//! What it is for: the one step that changes which deployment a device runs. In symlink mode
//! that is the `current` link (e.g. `/opt/example/current → /var/lib/ferry/deploy/<id>`),
//! replaced by `symlink(tmp)` + `rename(tmp, current)` + fsync of the directory, so a power
//! cut at any instant leaves the old target or the new one, never neither; and the durable
//! record of a deployment on trial ([`trial`]); and the bootloader environments (U-Boot's and
//! GRUB's, through their real tools) with the trial handshake the shipped boot scripts
//! follow ([`bootenv`]).
//! What it is not for: repositories, chunks, HTTP.

pub mod bootenv;
pub mod switch;
pub mod trial;

pub use switch::{current_target, switch_symlink, SwitchError};
pub use trial::{Trial, TrialError};
