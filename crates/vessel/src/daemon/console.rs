//! `GET /v1/domains/{name}/console` with `Upgrade: vessel-console`: the connection switches to
//! raw bytes both ways. The daemon first sends the output kept while nobody was attached (a
//! bounded ring), then live output; bytes from the client go to the guest's serial port. The
//! client detaches by closing its side (the CLI does so on its detach key).

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use control::ControlPlane;

use super::api;
use super::deadline::DeadlineStream;
use crate::http::{self, Request};

/// The protocol name in `Upgrade`.
pub const PROTOCOL: &str = "vessel-console";

/// Whether `req` asks for the console stream.
pub fn wants_upgrade(req: &Request) -> bool {
    req.method == "GET"
        && req
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case(PROTOCOL))
        && matches!(api::find(&req.method, &req.path), Ok((r, _)) if r.pattern.ends_with("/console"))
}

/// Serves the console stream of the domain `req` names until the client goes away. The
/// caller has lifted the connection's deadlines.
pub fn serve(
    plane: &ControlPlane,
    req: &Request,
    mut reader: BufReader<DeadlineStream>,
    mut writer: DeadlineStream,
) {
    let Ok((_, params)) = api::find(&req.method, &req.path) else {
        return;
    };
    let name = params.name;
    let log = match plane.console(&name) {
        Ok(log) => log,
        Err(e) => {
            let _ = http::write_response(&mut writer, &api::error_response(&e), true);
            return;
        }
    };
    let head = format!(
        "HTTP/1.1 101 {}\r\nUpgrade: {PROTOCOL}\r\nConnection: Upgrade\r\n\r\n",
        http::reason(101)
    );
    let (kept, live) = log.attach();
    if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&kept).is_err() {
        return;
    }
    let done = Arc::new(AtomicBool::new(false));
    let output = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    match live.recv_timeout(Duration::from_millis(200)) {
                        Ok(bytes) => {
                            if writer.write_all(&bytes).is_err() {
                                return;
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(_) => return,
                    }
                }
            })
    };
    // Input: whatever the client typed, to the domain's current machine (dropped while the
    // domain is not running).
    let mut buf = [0u8; 1024];
    loop {
        // Bytes the request's reader already buffered come first.
        let n = {
            let pending = reader.buffer().len();
            if pending > 0 {
                let n = pending.min(buf.len());
                buf[..n].copy_from_slice(&reader.buffer()[..n]);
                reader.consume(n);
                n
            } else {
                match reader.get_mut().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                }
            }
        };
        plane.console_input(&name, &buf[..n]);
    }
    done.store(true, Ordering::SeqCst);
    let _ = reader
        .get_ref()
        .get_ref()
        .shutdown(std::net::Shutdown::Both);
    if let Ok(t) = output {
        let _ = t.join();
    }
}
