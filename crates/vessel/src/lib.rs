//! The library half of the `vessel` package: the parts of the binary that code outside it must
//! reach. Today that is the daemon API's HTTP subset ([`http`]), which the fuzz targets
//! (`fuzz/`) drive directly; everything else lives in the binary (`main.rs`), which uses this
//! module as `crate::http`.
#![forbid(unsafe_code)]

pub mod http;
