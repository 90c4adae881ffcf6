//! Fuzzes Vessel's own qcow2 reader (`devices::image::qcow2_check`): the header and its
//! extensions, then the walk of every L1 and L2 table, compressed cluster, snapshot table and
//! refcount block, from bytes in memory. The same header check runs on every qcow2 disk before
//! imago sees it. Properties: no panic, and a report only for a header that parses alone.
#![no_main]

use devices::image::qcow2_check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = qcow2_check::parse_header(data);
    match qcow2_check::check(data) {
        Ok(report) => {
            assert!(header.is_ok(), "check accepted a header parse_header refused");
            assert_eq!(report.file_size, data.len() as u64);
            assert!(report.problems.len() <= 101, "problems are capped");
        }
        Err(_) => assert!(header.is_err()),
    }
});
