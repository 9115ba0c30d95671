//! Shared by the page and the training worker: the message protocol, browser storage and
//! zip archives.

pub mod protocol;
pub mod storage;
pub mod zipfile;
