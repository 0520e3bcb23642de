//! A real browser for the console's tests: Debian's headless `chromium`, driven by its
//! `chromedriver` over W3C WebDriver (both installed by `./run`).
//!
//! The WebDriver client is written here: a dozen JSON commands over HTTP/1.1 to chromedriver on
//! loopback, on std's `TcpStream`. `fantoccini` or `thirtyfour` would bring a hyper client and
//! an async runtime into every test that only needs to click and read, and their APIs are
//! larger than the part used here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the driver and the browser end when it is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens one headless Chromium session
    /// (self-signed certificates accepted: the services under test make their own).
    pub fn start() -> Result<Browser> {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (Debian package chromium-driver; ./run installs it)")?;
        let mut lines = BufReader::new(driver.stdout.take().expect("piped")).lines();
        let port = loop {
            let line = match lines.next() {
                Some(l) => l?,
                None => bail!("chromedriver exited before saying its port"),
            };
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse::<u16>()?;
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let profile = tempfile::tempdir()?;
        let mut b = Browser { driver, port, session: String::new(), _profile: profile };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1100,1000", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"].as_str().ok_or_else(|| anyhow!("no session id in {v}"))?.to_string();
        Ok(b)
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(90)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        // chromedriver keeps the connection open whatever the request says: read the header,
        // then exactly the body it announces.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        let split = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("{method} {path}: chromedriver closed the connection");
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut payload = raw[split + 4..].to_vec();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head.contains("transfer-encoding: chunked");
        loop {
            let complete = match length {
                Some(n) => payload.len() >= n,
                None if chunked => payload.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if complete {
                break;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            payload.extend_from_slice(&buf[..n]);
        }
        if chunked {
            payload = dechunk(&payload)?;
        }
        let v: Value = serde_json::from_slice(&payload)
            .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&payload)))?;
        if status >= 400 {
            bail!("{method} {path}: {} {}", v["value"]["error"], v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url }))).map(|_| ())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self.call("GET", &self.at("/url"), None)?.as_str().unwrap_or_default().to_string())
    }

    pub fn title(&self) -> Result<String> {
        Ok(self.call("GET", &self.at("/title"), None)?.as_str().unwrap_or_default().to_string())
    }

    /// Resizes the window (e.g. 390×844 for a phone's screen).
    pub fn set_window(&self, width: u32, height: u32) -> Result<()> {
        self.call("POST", &self.at("/window/rect"), Some(json!({"width": width, "height": height})))
            .map(|_| ())
    }

    /// Every element matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let v =
            self.call("POST", &self.at("/elements"), Some(json!({"using": "css selector", "value": css})))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element { browser: self, id: id.into() })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching `css`, waiting up to `timeout` for it.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css)?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                let page = self.execute("return document.body ? document.body.innerText : ''", json!([]))?;
                let page: String = page.as_str().unwrap_or_default().chars().take(600).collect();
                bail!("no element {css:?} on {} after {timeout:?}; the page says: {page}", self.url()?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        self.wait_for(css, Duration::ZERO)
    }

    /// Runs a script in the page (`arguments` are `args`); its return value.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.call("POST", &self.at("/execute/sync"), Some(json!({"script": script, "args": args})))
    }

    /// Runs an asynchronous script: it calls `arguments[arguments.length - 1]` with its result.
    pub fn execute_async(&self, script: &str, args: Value) -> Result<Value> {
        self.call("POST", &self.at("/execute/async"), Some(json!({"script": script, "args": args})))
    }

    /// The cookies the browser holds for the current page, as WebDriver reports them (with
    /// `httpOnly`, `secure`, `sameSite`).
    pub fn cookies(&self) -> Result<Vec<Value>> {
        Ok(self.call("GET", &self.at("/cookie"), None)?.as_array().cloned().unwrap_or_default())
    }

    pub fn delete_cookies(&self) -> Result<()> {
        self.call("DELETE", &self.at("/cookie"), None).map(|_| ())
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine;
        let v = self.call("GET", &self.at("/screenshot"), None)?;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// How long the current page took to load (navigation start to load event end), as the
    /// browser measured it, in milliseconds.
    pub fn load_ms(&self) -> Result<f64> {
        let v = self.execute(
            "const n = performance.getEntriesByType('navigation')[0]; return n ? n.loadEventEnd - n.startTime : -1;",
            json!([]),
        )?;
        v.as_f64().ok_or_else(|| anyhow!("no navigation timing: {v}"))
    }
}

impl Element<'_> {
    fn at(&self, rest: &str) -> String {
        self.browser.at(&format!("/element/{}{rest}", self.id))
    }

    pub fn click(&self) -> Result<()> {
        self.browser.call("POST", &self.at("/click"), Some(json!({}))).map(|_| ())
    }

    /// Types `text` into the element.
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.browser.call("POST", &self.at("/value"), Some(json!({ "text": text }))).map(|_| ())
    }

    /// The rendered text.
    pub fn text(&self) -> Result<String> {
        Ok(self.browser.call("GET", &self.at("/text"), None)?.as_str().unwrap_or_default().to_string())
    }

    /// Elements matching `css` inside this one.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let v = self.browser.call(
            "POST",
            &self.at("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element { browser: self.browser, id: id.into() })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        // chromedriver's own shutdown also quits any browser it started (a session that failed
        // half-way included); killing it alone would leave those running.
        let _ = self.call("GET", "/shutdown", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])?.split(';').next().unwrap_or("").trim(),
            16,
        )?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + size).ok_or_else(|| anyhow!("short chunk"))?);
        b = b.get(eol + 4 + size..).unwrap_or_default();
    }
}
