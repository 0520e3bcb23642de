//! What the services' browser consoles (the gate's approvals, the vault's incidents) share:
//! random tokens, cookies (`__Host-`, `Secure; HttpOnly; SameSite=Strict`), constant-time
//! token comparison, the same-origin and CSRF checks for a POST (the sign-in form's double-submit
//! token included), the sign-in and sign-out redirects with their cookies, and the security
//! headers on every page.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

/// 32 random bytes, base64url: a session token or a CSRF token.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Whether two tokens are equal, in constant time (an empty token never matches).
pub fn ct_eq(a: &str, b: &str) -> bool {
    // Lengths are not secret (every token has the same); contents are compared in constant time.
    bool::from(a.as_bytes().ct_eq(b.as_bytes())) && !a.is_empty()
}

/// The value of cookie `name` in a request.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` header for a cookie only this origin's pages send, over TLS, invisible to
/// scripts; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> (header::HeaderName, HeaderValue) {
    let v = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    (header::SET_COOKIE, HeaderValue::from_str(&v).expect("cookie names and values are base64url"))
}

/// A browser's POST must come from the console itself: `Origin` (sent by every current browser
/// on a POST) names this host, and `Sec-Fetch-Site`, when sent, says same-origin. Clients that
/// send neither still need the CSRF token.
pub fn same_origin(h: &HeaderMap) -> bool {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(o) = h.get(header::ORIGIN)
        && o.to_str().ok() != Some(&format!("https://{host}"))
    {
        return false;
    }
    match h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin",
        None => true,
    }
}

/// A signed-in POST is the console's own: it carries the session's CSRF token and, as far as the
/// browser says, comes from this origin.
pub fn post_ok(session_csrf: &str, form_csrf: &str, h: &HeaderMap) -> bool {
    ct_eq(session_csrf, form_csrf) && same_origin(h)
}

/// The sign-in form's double-submit CSRF token (there is no session yet): a fresh token for the
/// form's hidden field, and the `Set-Cookie` header that carries the same token for `max_age`
/// seconds.
pub fn login_csrf(login_cookie: &str, max_age: u64) -> (String, (header::HeaderName, HeaderValue)) {
    let csrf = random_token();
    let set = set_cookie(login_cookie, &csrf, max_age);
    (csrf, set)
}

/// A sign-in POST came from the console's own form: its token equals the login cookie's (see
/// [`login_csrf`]) and, as far as the browser says, from this origin.
pub fn login_post_ok(h: &HeaderMap, login_cookie: &str, form_csrf: &str) -> bool {
    cookie(h, login_cookie).is_some_and(|c| ct_eq(c, form_csrf)) && same_origin(h)
}

/// The answer to a successful sign-in: a redirect to `to` that sets the session cookie for
/// `max_age` seconds and deletes the sign-in form's cookie.
pub fn signed_in_redirect(
    to: &str,
    session_cookie: &str,
    token: &str,
    max_age: u64,
    login_cookie: &str,
) -> Response {
    let mut r = Redirect::to(to).into_response();
    for (k, v) in [set_cookie(session_cookie, token, max_age), set_cookie(login_cookie, "", 0)] {
        r.headers_mut().append(k, v);
    }
    r
}

/// The answer to signing out: a redirect to `to` that deletes the session cookie.
pub fn signed_out_redirect(to: &str, session_cookie: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    let (k, v) = set_cookie(session_cookie, "", 0);
    r.headers_mut().append(k, v);
    r
}

/// On every console response: nothing cached, nothing framed, no script or style but the
/// console's own. For `axum::middleware::map_response`.
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` on a form's POST, and
        // `same_origin` could not tell the console's forms from anyone's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cookies_and_origins() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd") && !ct_eq("", "") && !ct_eq("abc", "ab"));
        assert_ne!(random_token(), random_token());
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-s=tok; b=2"));
        assert_eq!(cookie(&h, "__Host-s"), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
        let (_, v) = set_cookie("__Host-s", "t", 900);
        assert!(v.to_str().unwrap().contains("Secure; HttpOnly; SameSite=Strict"), "{v:?}");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:6433"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://127.0.0.1:6433"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn sign_in_form_and_session_cookies() {
        let (csrf, (_, v)) = login_csrf("__Host-l", 600);
        assert!(v.to_str().unwrap().starts_with(&format!("__Host-l={csrf};")), "{v:?}");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:6433"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://127.0.0.1:6433"));
        assert!(!login_post_ok(&h, "__Host-l", &csrf), "no cookie");
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("__Host-l={csrf}")).unwrap());
        assert!(login_post_ok(&h, "__Host-l", &csrf));
        assert!(!login_post_ok(&h, "__Host-l", "other"));
        assert!(post_ok("s", "s", &h) && !post_ok("s", "t", &h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!login_post_ok(&h, "__Host-l", &csrf) && !post_ok("s", "s", &h));
        let r = signed_in_redirect("/console/x", "__Host-s", "tok", 900, "__Host-l");
        let set: Vec<_> =
            r.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert!(set[0].starts_with("__Host-s=tok;") && set[0].ends_with("Max-Age=900"), "{set:?}");
        assert!(set[1].starts_with("__Host-l=;") && set[1].ends_with("Max-Age=0"), "{set:?}");
        assert_eq!(r.headers()[header::LOCATION], "/console/x");
        let r = signed_out_redirect("/console/login", "__Host-s");
        assert!(r.headers()[header::SET_COOKIE].to_str().unwrap().ends_with("Max-Age=0"));
    }
}
