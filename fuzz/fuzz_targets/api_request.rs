//! The API from the socket's bytes inward: the HTTP parser (pipelined requests), the router and
//! its JSON bodies, and the controller's validation, over a fake VMM. Every answer must
//! serialise to a well-formed HTTP response; nothing may panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use squib_fuzz::{controller, is_sandboxed};
use squib_vmm::api::http::{self, Parsed};
use squib_vmm::api::action::VmmAction;
use squib_vmm::api::router::route;

/// Firecracker's default `--http-api-max-payload-size`.
const MAX_PAYLOAD: usize = 51_200;

/// Requests that name host files must stay in the sandbox; logger and metrics create files.
fn allowed(request: &VmmAction) -> bool {
    match request {
        VmmAction::PutBootSource(b) => {
            is_sandboxed(&b.kernel_image_path) && b.initrd_path.as_deref().is_none_or(is_sandboxed)
        }
        VmmAction::PutDrive(_, d) => d.path_on_host.as_deref().is_none_or(is_sandboxed),
        VmmAction::PatchDrive(_, d) => d.path_on_host.as_deref().is_none_or(is_sandboxed),
        VmmAction::PutLogger(_) | VmmAction::PutMetrics(_) => false,
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut controller = controller();
    let mut buf = data;
    // Pipelined requests, as one connection would send them.
    for _ in 0..16 {
        let (request, used) = match http::parse(buf, MAX_PAYLOAD) {
            Ok(Parsed::Complete(request, used)) => (request, used),
            Ok(Parsed::Incomplete { .. }) | Err(_) => return,
        };
        assert!(used > 0 && used <= buf.len());
        buf = &buf[used..];
        let response = match route(&request.method, &request.path, &request.body) {
            Ok(routed) if !allowed(&routed) => continue,
            Ok(_) | Err(_) => controller.handle_http(&request),
        };
        let bytes = response.to_bytes(request.keep_alive);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        assert!(
            matches!(parsed.parse(&bytes), Ok(httparse::Status::Complete(_))),
            "squib wrote a malformed HTTP response"
        );
    }
});
