//! The text of every repository, device and admin API message, pinned: each value serialises to exactly
//! the bytes the server (and `ferryd`, and `ferry`) wrote before the messages had types,
//! and reads back to the same value.

mod admin;
mod device;
mod repo;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` is written as `text`, and `text` reads back as `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, text: &str) {
    assert_eq!(serde_json::to_string(value).unwrap(), text);
    assert_eq!(&serde_json::from_str::<T>(text).unwrap(), value);
}
