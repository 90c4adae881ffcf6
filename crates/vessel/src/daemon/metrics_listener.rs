//! `vessel daemon --metrics-listen ADDR:PORT`: `GET /metrics` over TCP and nothing else, so a
//! Prometheus server can scrape the daemon without the control socket's power over domains.
//!
//! Each connection gets one request and one answer, both within [`LIMIT`] of its start, then
//! is closed; at most [`MAX_CONNECTIONS`] are served at once (more are answered 503). Any other
//! path is 404 and any other method 405, whatever the body.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::ControlPlane;

use super::deadline::DeadlineStream;
use super::metrics;
use crate::http::{self, Request, Response};

/// Most scrapes served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection may take, from accept to the end of the answer.
const LIMIT: Duration = Duration::from_secs(10);

/// Serves `listener` on a thread of its own, for as long as the daemon runs.
pub fn spawn(plane: Arc<ControlPlane>, listener: TcpListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            super::serve_connections(
                listener.incoming(),
                MAX_CONNECTIONS,
                "metrics-conn",
                |mut stream: TcpStream| {
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = http::write_response(
                        &mut stream,
                        &Response::error(503, "too many connections"),
                        true,
                    );
                },
                move |stream| serve(&plane, stream),
            );
        })?;
    Ok(())
}

/// One request on `stream`, one answer, and the connection is closed.
fn serve(plane: &ControlPlane, stream: TcpStream) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let deadline = Some(Instant::now() + LIMIT);
    let mut writer = DeadlineStream::new(writer);
    writer.set_deadline(deadline);
    let mut reader = BufReader::new(DeadlineStream::new(stream));
    reader.get_mut().set_deadline(deadline);
    let resp = match http::read_request(&mut reader) {
        Ok(Some(req)) => answer(plane, &req),
        Ok(None) => return,
        Err(e) => Response::error(e.status, &e.message),
    };
    let _ = http::write_response(&mut writer, &resp, true);
}

/// The answer to `req`: the metrics for `GET /metrics`, an error for anything else.
fn answer(plane: &ControlPlane, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => {
            Response::text(200, "text/plain; version=0.0.4", metrics::render(plane))
        }
        (_, "/metrics") => Response::error(405, "only GET /metrics is served here"),
        _ => Response::error(
            404,
            "this listener serves GET /metrics only; the API is on the daemon's Unix socket",
        ),
    }
}
