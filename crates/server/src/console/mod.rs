//! The console: a web page served by the coordinator at `/` on
//! `--http-listen`, showing its transactions as a tree table (SPEC §5).
//!
//! The page, its script and its styles are compiled into the binary
//! (`include_str!`), so it works offline and loads nothing from another
//! host: the Content-Security-Policy says so to the browser as well. The
//! script is a dependency-free ES module (no npm build to reproduce) and
//! uses only the public HTTP API, with the API token when one is set (the
//! page asks for it on a 401). The assets hold no data, so they are served
//! without the token. Operator actions (`operator.js`) need the operator
//! token as well, which the page asks for in the action's dialog.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const OPERATOR_JS: &str = include_str!("operator.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// Nothing but this origin: no CDN, no inline script, no remote fonts.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Always revalidated: a new binary serves its own script at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub async fn operator_script() -> Response {
    asset("text/javascript; charset=utf-8", OPERATOR_JS)
}

pub async fn styles() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offline means no URL of another host anywhere in the assets.
    #[test]
    fn the_assets_load_nothing_from_another_host() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("console.js", CONSOLE_JS),
            ("operator.js", OPERATOR_JS),
            ("console.css", CONSOLE_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "{name} contains {needle}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"/console.js\""));
        assert!(INDEX_HTML.contains("role=\"treegrid\""));
    }
}
